#!/bin/bash
# A short GPU lease for issue 6 (about 4 minutes): PIDM fine-tune of the kept Darcy prior
# (benchmarks/models/darcy_ft, loaded with --edm-from, not trained) for T seconds with the Darcy residual term,
# then, while time is left, score pidm+dps on the inverse task on the GPU. The PIDM prior's EMA weights come
# back as $OUT/prior_pidm.tar (rescore on a CPU with --eval-only --edm-from ... --workdir <untarred>).
# DEV=cuda T=90 OUT=<dir> bash benchmarks/gpu_darcy_pidm.sh
# Smoke run on a CPU: DEV=cpu T=10 QUICK=1 OUT=/tmp/out bash benchmarks/gpu_darcy_pidm.sh
set -u
DEV=${DEV:-cuda}; T=${T:-90}; Q=${QUICK:-}; LIMIT=${LIMIT:-250}
W=/tmp/gpu_darcy_pidm
. benchmarks/gpu_env.sh
mkdir -p "$OUT"; cp "$W/gpu.txt" "$OUT/"
left() { echo $((LIMIT - SECONDS)); }
BASE="benchmarks/darcy_inverse.py --n 64 --train 2000 --cases 50 --steps 100 --sampler ddim --pde-sigma 1.0 --channels 16,32,64
 --threads 8 --eval-device $DEV --workdir $W/w --train-steps 100000 --batch 256 --lr 5e-4 --pidm-finetune 1000000
 --edm-from benchmarks/models/darcy_ft/edm_n64_N2000_s100000_c16-32-64"
[ -n "$Q" ] && BASE="$BASE --cases 2 --steps 5"
echo "[P] PIDM fine-tune for ${T}s (t=${SECONDS}s)"
timeout $((T + 60)) $PY $BASE --settings pidm+dps --train-only --device $DEV --pidm-seconds $T > "$OUT/p.log" 2>&1; tail -n 2 "$OUT/p.log"
R=pidm_ft1000000_n64_N2000_s100000_c16-32-64; S=$(cat $W/w/$R/latest)
tar -C "$W/w" -cf "$OUT/prior_pidm.tar" $R/latest $R/$S/ema.safetensors $R/$S/trainer.json $R/$S/config.json $R/metrics.jsonl
if [ "$(left)" -gt 60 ]; then
  echo "[E] pidm+dps inverse, 8 draws (t=${SECONDS}s)"
  timeout $(left) $PY $BASE --eval-only --settings pidm+dps --tasks inverse --zeta-obs 30 --samples 8 \
    --out "$OUT/pidm_inverse_dps.json" > "$OUT/e.log" 2>&1; tail -n 3 "$OUT/e.log"
fi
echo "done at t=${SECONDS}s"; ls -la "$OUT"
