#!/bin/bash
# One GPU lease for issue 23, item 3: the DiffusionPDE task suite at 128 x 128 (500 observed nodes, DiffusionPDE's)
# under benchmarks/pde_inverse.py's protocol, for the systems in SYSTEMS, one after another:
#   DEV=cuda SYSTEMS=poisson T=150 OUT=<dir> bash benchmarks/gpu_pde.sh        # device `run` with timeout_s=600
# Smoke run on a CPU (16 x 16, about a minute a system): DEV=cpu QUICK=1 OUT=/tmp/gpu_pde_out bash benchmarks/gpu_pde.sh
#
# Needs on the device: `import sciffusion.systems` imports dask, which that image lacks (it has torch 2.11, xarray,
# scipy, safetensors, tqdm; no dask, zarr or netCDF4). Carry pure-Python wheels in .whl (benchmarks/gpu_env.sh installs
# them): python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#   dask==2026.8.0 partd==1.4.2 locket==1.0.0        and name .whl in the run's carry.
#
# Sizes, chosen to fit one 600-s command for ONE system (the default); four systems need four leases. They are
# ESTIMATES, not measured on a GPU: the prior (EDM U-Net [32, 64, 128], 2.9 M parameters) costs 12.6 GFLOP per
# forward pass per 128 x 128 sample (counted with FlopCounterMode), so about 38 GFLOP per forward + VJP. A draw of
# the public defaults (MMPS, 50 steps, 1 forward + 6 VJPs a step) is ~8 TFLOP and one of DPS at 200 steps ~7.5.
#   - data: N_TRAIN=1000 pairs (Darcy's SuperLU solves on 14 host processes, ~0.15 s each: ~15 s; NS on the GPU)
#   - training: T seconds per prior (Trainer, bf16 autocast on CUDA, batch 64), checkpointed under $W
#   - validation: 8 cases x 2 draws x 4 settings (the defaults, DPS zeta 3 and 30, and the exact solve at zeta 3,
#     or residual guidance for Darcy) x 2 tasks x NOISE levels: ~130 draws per level, ~1 PFLOP
#   - test: 100 cases x 2 draws x (defaults + chosen) x 2 tasks: 800 draws per noise level, ~6.4 PFLOP, i.e. about
#     1-2 minutes per level at an assumed 50-100 TFLOP/s (fp32 sampling of a small U-Net; not measured)
#   So with T=150 and NOISE="0 0.01" one system is ~150 + 30 + 260 s plus data and start-up: inside LIMIT=540 s.
#   GRID=64 (125 nodes) costs a quarter per draw: all four systems with T=60 should fit one lease (estimate).
#   The run is killed at LIMIT; every finished validation/test row is already in its JSON under $OUT (rows are
#   written one by one, noiseless first), and the priors' EMA weights come back as $OUT/priors.tar.NN.
set -u
DEV=${DEV:-cuda}; GRID=${GRID:-128}; T=${T:-150}; SYSTEMS=${SYSTEMS:-poisson}; NOISE=${NOISE:-0 0.01}; Q=${QUICK:-}; LIMIT=${LIMIT:-540}
W=/tmp/gpu_pde
. benchmarks/gpu_env.sh
mkdir -p "$OUT"; cp "$W/gpu.txt" "$OUT/"
if ! $PY -c "import sciffusion.systems, sciffusion.inverse, sciffusion.training" > "$OUT/import.log" 2>&1; then
  cat "$OUT/import.log"; echo "sciffusion does not import here: carry the wheels named at the top of this script"; exit 1
fi
A="benchmarks/pde_inverse.py --grid $GRID --device $DEV --work $W/work --n-train 1000 --n-val 8 --n-test 100 --draws 2
   --case-batch 100 --batch 64 --train-steps 100000 --train-seconds $T --noise $NOISE --data-workers 14 --threads 2
   --settings defaults dps-zeta3 dps-zeta30 solve-zeta3 residual-zeta3"
[ -n "$Q" ] && A="benchmarks/pde_inverse.py --quick --device $DEV --work $W/work --noise $NOISE"
for S in $SYSTEMS; do
  left=$((LIMIT - SECONDS))
  [ "$left" -lt 60 ] && { echo "skipping $S: ${left}s left"; continue; }
  echo "[$S] t=${SECONDS}s, ${left}s left"
  timeout "$left" $PY $A --systems "$S" --out "$OUT/pde_inverse_${GRID}_$S" > "$OUT/$S.log" 2>&1
  echo "[$S] exit $? at t=${SECONDS}s"; tail -n 25 "$OUT/$S.log"
done
# the priors' EMA weights (11.6 MB each) with their config and trainer record, in 15-MB pieces
cd "$W/work" && for r in prior_*/; do s=$(cat "$r/latest" 2>/dev/null) && echo "$r$s/ema.safetensors $r$s/config.json $r$s/trainer.json $r/latest"; done \
  | xargs tar -cf "$OUT/priors.tar" 2>/dev/null && split -b 15m -d "$OUT/priors.tar" "$OUT/priors.tar." && rm "$OUT/priors.tar"
ls -la "$OUT"
