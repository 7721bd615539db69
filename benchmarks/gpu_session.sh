#!/bin/bash
# One GPU lease (15 min): train the rollout emulators (AR small/large, DYffusion), the Darcy priors and the
# 64x64 downscaler side by side on one GPU; the rollouts and Darcy are then scored on the CPU (--load-model,
# --eval-only). Needs .gpu/rollout_train.npy from `rollout_kolmogorov.py --pack-train-data` and .whl wheels.
# DEV=cuda T=<train seconds> DT=<downscale budget> QUICK=<empty or --quick> OUT=<dir> bash benchmarks/gpu_session.sh
set -u
DEV=${DEV:-cuda}; T=${T:-360}; Q=${QUICK:-}; DT=${DT:-420}
W=/tmp/gpuw
. benchmarks/gpu_env.sh
R="benchmarks/rollout_kolmogorov.py --pattern --train-data .gpu/rollout_train.npy --train-only --device $DEV --batch-size 128 --ema 0.999 --train-steps 1000000 --train-seconds $T $Q"
timeout $((T+90)) $PY $R --model ar --net-channels 32 64 128 --save-model $W/ar_big > $W/ar_big.log 2>&1 &
timeout $((T+90)) $PY $R --model ar --save-model $W/ar_small > $W/ar_small.log 2>&1 &
timeout $((T+90)) $PY $R --model dyffusion --net-channels 32 64 128 --save-model $W/dy_big > $W/dy_big.log 2>&1 &
DA="benchmarks/darcy_inverse.py --n 64 --train 2000 --train-steps 1000000 --batch 128 --lr 1e-3 --ema 0.999 --channels 32,64,128 --pidm-finetune 1000000 --settings residual pidm+residual --workdir $W/darcy --threads 2"
if [ -n "$Q" ]; then DA="$DA --n 16 --train 64 --channels 8,16 --batch 16"; fi
timeout $((T+120)) $PY $DA --train-only --device $DEV --train-seconds $((T*4/5)) --pidm-seconds $((T/5)) > $W/darcy.log 2>&1 &
DS="benchmarks/downscale_kolmogorov.py --size 64 --device $DEV --channels 64 128 256 --batch-size 128 --steps 100000 --n-train 200 --time-budget $DT --s-noise 1.0 1.03 1.05 1.08 1.12 --criterion ssr+spectrum --out $W/downscale64.json $Q"
timeout $((DT+90)) $PY $DS > $W/downscale.log 2>&1 &
while [ -n "$(jobs -r)" ]; do sleep 30; echo "$(date +%T) running: $(jobs -r | wc -l)"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; done
wait
# slim the Darcy runs to the EMA weights + JSON
for d in $W/darcy/*/; do s=$(cat $d/latest); find $d/$s -name 'weights.safetensors' -delete -o -name 'trainer.safetensors' -delete; rm -rf $(ls -d $d/step_* | grep -v $s); done
tail -n 5 $W/*.log
du -sh $W/*
mkdir -p $OUT && tar -C $W -cf $OUT/all.tar . && split -b 15m -d $OUT/all.tar $OUT/all.tar. && rm $OUT/all.tar
ls -la $OUT
