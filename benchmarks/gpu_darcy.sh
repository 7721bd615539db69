#!/bin/bash
# One GPU lease for issue 6's Darcy table: train the 64x64 joint (a, u) EDM prior alone on the GPU for T
# seconds, then score residual guidance, DPS and the exact-solve setting (forward and inverse, 50 cases) with the posterior samples
# drawn on the GPU too (--eval-device). Outputs (JSON, logs, the prior's EMA weights) go to $OUT as a tar.
# DEV=cuda T=<train seconds> ZFWD=<solve zeta, forward> ZINV=<solve zeta, inverse> CASES=50 N=<64 or 128> QUICK=<empty or 1> OUT=<dir> bash benchmarks/gpu_darcy.sh
# (N=128 is DiffusionPDE's grid: 3% of it is ~500 points, against ~120 at N=64 over the same physical GRF scale)
# Smoke run on a CPU: DEV=cpu T=20 QUICK=1 OUT=/tmp/out bash benchmarks/gpu_darcy.sh
# Carry the py3.12 wheels in .whl (see benchmarks/gpu_env.sh).
set -u
DEV=${DEV:-cuda}; T=${T:-360}; CASES=${CASES:-50}; N=${N:-64}; Q=${QUICK:-}
W=/tmp/gpu_darcy
. benchmarks/gpu_env.sh
# first the device plumbing of inverse.sample: every method on CUDA against the CPU run (skipped on a CPU)
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_inverse_device.py > $W/pytest_device.log 2>&1; tail -n 3 $W/pytest_device.log
DA="benchmarks/darcy_inverse.py --n $N --train 2000 --train-steps 1000000 --batch 128 --lr 1e-3 --ema 0.999 --channels 32,64,128 --workdir $W/darcy --threads 4 --cases $CASES --samples 2 --steps 100 --sampler ddim --pde-sigma 1.0"
if [ -n "$Q" ]; then DA="$DA --n 16 --train 64 --channels 8,16 --batch 16 --cases 2 --steps 5"; fi
timeout $((T+120)) $PY $DA --settings residual --train-only --device $DEV --train-seconds $T > $W/train.log 2>&1
tail -n 3 $W/train.log
timeout 900 $PY $DA --settings residual dps --eval-only --eval-device $DEV --zeta-obs 30 --tasks inverse --out $W/darcy_inverse_zeta30.json > $W/eval_inverse.log 2>&1
timeout 900 $PY $DA --settings residual dps --eval-only --eval-device $DEV --zeta-obs 3 --tasks forward --out $W/darcy_forward_zeta3.json > $W/eval_forward.log 2>&1
# the exact-solve setting (DarcyProjection, guidance through the solve; the solves run on the host CPU)
timeout 900 $PY $DA --settings solve --eval-only --eval-device $DEV --zeta-obs ${ZINV:-100} --tasks inverse --out $W/darcy_inverse_solve.json > $W/eval_inverse_solve.log 2>&1
timeout 900 $PY $DA --settings solve --eval-only --eval-device $DEV --zeta-obs ${ZFWD:-10} --tasks forward --out $W/darcy_forward_solve.json > $W/eval_forward_solve.log 2>&1
tail -n 4 $W/eval_*.log
for d in $W/darcy/*/; do s=$(cat $d/latest); find $d/$s -name 'weights.safetensors' -delete -o -name 'trainer.safetensors' -delete; rm -rf $(ls -d $d/step_* | grep -v $s); done
du -sh $W/*
mkdir -p $OUT && tar -C $W -cf $OUT/darcy.tar . && split -b 15m -d $OUT/darcy.tar $OUT/darcy.tar. && rm $OUT/darcy.tar
ls -la $OUT
