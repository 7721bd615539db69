#!/bin/bash
# A short GPU lease for issue 6 (about 9 minutes of the 15 a task gets): (A) score the CPU-trained Darcy prior
# (benchmarks/models/darcy_cpu) on the inverse task with 32 posterior draws per case, (B) continue training that
# prior on the GPU for T seconds (its EMA weights as the start, a fresh optimiser, batch 256, lr 5e-4),
# (C) score the continued prior (inverse DPS, 16 draws; forward DPS, 4 draws) and (D), if time is left,
# fine-tune it with the PIDM residual term and score pidm+dps. Samples are drawn on the GPU (--eval-device).
# Every stage writes its JSON/log straight to $OUT, so a stage cut off by the lease keeps the earlier ones;
# the continued prior's EMA weights come back as $OUT/prior_ft.tar (rescore on a CPU with --eval-only).
# DEV=cuda T=180 OUT=<dir> bash benchmarks/gpu_darcy_continue.sh
# Smoke run on a CPU: DEV=cpu T=10 QUICK=1 OUT=/tmp/out bash benchmarks/gpu_darcy_continue.sh
# Carry the py3.12 wheels in .whl (see benchmarks/gpu_env.sh).
set -u
DEV=${DEV:-cuda}; T=${T:-180}; Q=${QUICK:-}; LIMIT=${LIMIT:-560}
W=/tmp/gpu_darcy_continue
. benchmarks/gpu_env.sh
mkdir -p "$OUT"; cp "$W/gpu.txt" "$OUT/"
RUN=edm_n64_N2000_s20000_c16-32-64
cp -r benchmarks/models/darcy_cpu "$W/cpu"
BASE="benchmarks/darcy_inverse.py --n 64 --train 2000 --cases 50 --steps 100 --sampler ddim --pde-sigma 1.0 --channels 16,32,64 --threads 8 --eval-device $DEV"
[ -n "$Q" ] && BASE="$BASE --cases 2 --steps 5"
left() { echo $((LIMIT - SECONDS)); }
echo "[A] CPU prior, inverse DPS, 32 draws (t=${SECONDS}s)"
timeout 150 $PY $BASE --workdir "$W/cpu" --train-steps 20000 --eval-only --settings dps --tasks inverse --zeta-obs 30 \
  --samples 32 --out "$OUT/cpu_inverse_dps_m32.json" > "$OUT/a.log" 2>&1; tail -n 3 "$OUT/a.log"
echo "[B] continue the CPU prior for ${T}s (t=${SECONDS}s)"
mkdir -p "$W/ft"; cp "$W"/cpu/data_*.npz "$W/ft/" 2>/dev/null
FT="$BASE --workdir $W/ft --train-steps 100000 --batch 256 --lr 5e-4 --ema 0.999"
timeout $((T + 60)) $PY $FT --init-from "$W/cpu/$RUN" --settings dps --train-only --device $DEV --train-seconds $T \
  > "$OUT/b.log" 2>&1; tail -n 2 "$OUT/b.log"
R="$W/ft/edm_n64_N2000_s100000_c16-32-64"
[ -f "$R/latest" ] && tar -C "$W/ft" -cf "$OUT/prior_ft.tar" "$(basename $R)/latest" "$(basename $R)/$(cat $R/latest)/ema.safetensors" \
  "$(basename $R)/$(cat $R/latest)/trainer.json" "$(basename $R)/$(cat $R/latest)/config.json" "$(basename $R)/metrics.jsonl"
echo "[C] continued prior: inverse DPS 16 draws, forward DPS 4 draws (t=${SECONDS}s)"
timeout $(left) $PY $FT --eval-only --settings dps --tasks inverse --zeta-obs 30 --samples 16 \
  --out "$OUT/ft_inverse_dps_m16.json" > "$OUT/c1.log" 2>&1; tail -n 3 "$OUT/c1.log"
timeout $(left) $PY $FT --eval-only --settings dps --tasks forward --zeta-obs 3 --samples 4 \
  --out "$OUT/ft_forward_dps_m4.json" > "$OUT/c2.log" 2>&1; tail -n 3 "$OUT/c2.log"
if [ "$(left)" -gt 150 ]; then
  echo "[D] PIDM fine-tune of the continued prior, 50 s, then pidm+dps inverse (t=${SECONDS}s)"
  timeout $(left) $PY $FT --settings pidm+dps --pidm-finetune 1000000 --pidm-seconds 50 --train-seconds 0 --device $DEV --tasks inverse \
    --zeta-obs 30 --samples 16 --out "$OUT/ft_pidm_inverse_dps_m16.json" > "$OUT/d.log" 2>&1; tail -n 3 "$OUT/d.log"
fi
echo "done at t=${SECONDS}s"; ls -la "$OUT"
