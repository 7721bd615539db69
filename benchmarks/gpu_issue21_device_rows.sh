#!/bin/bash
# Prepared for the next GPU lease of issue 21 (one H200; not yet run; ~9.5 min at most, by the timeouts below).
# In order of what could turn a row of the issue from "not met" to "met":
# (1) the Kolmogorov rollout students at distill's public defaults (20,000 trajectories, 4,000 steps, batch 256;
#     the CPU here affords 1-8% of that), each trajectory conditioned on a state of its own from 40 fresh physics
#     runs; the checkpoints come back to $OUT/students and are scored on the CPU afterwards
#     (distill_rollout_kolmogorov.py --stage validate --students-from ...; docs/distillation.md);
# (2) the 256x256 training step at the default channels-last gradients with and without inductor's
#     force_layout_optimization (are the copies left in convolution backward the backward graph's own layouts?);
# (3) with the time left, the cost table like for like on the device: the tuned solvers with and without copying
#     their output to host memory, the emulators' members through generate (host Dataset) and generate_tensor
#     (left on the device), both member-stream kinds.
#   OUT=/tmp/o bash benchmarks/gpu_issue21_device_rows.sh
# Carry .whl (py3.12 wheels of dask, partd, locket, zarr, numcodecs, donfig, google-crc32c) and
# .venv/lib/python3.11/site-packages/torch_harmonics. The device returns at most 8 files per call: this writes 7
# (4 student files, the log, two JSON).
set -u
BUDGET=570
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
mkdir -p "$OUT"
(nvidia-smi; python3 -c "import torch,sys; print(torch.__version__, sys.version)") > "$OUT/log.txt" 2>&1
timeout 300 python3 benchmarks/distill_rollout_kolmogorov.py --stage distill --device cuda --calls 3 2 \
    --n-trajectories 20000 --distill-steps 4000 --batch-size 256 --condition-runs 40 --work /tmp/drk \
    --export "$OUT/students" 2>&1 | tail -20 | tee -a "$OUT/log.txt"
for f in "$OUT"/students/distill_*.json; do [ -e "$f" ] && { echo "$f: $(cat "$f")" >> "$OUT/log.txt"; rm "$f"; }; done
timeout 230 python3 benchmarks/gpu.py --budget 210 --compile-reserve 60 --no-sample --profile-compiled \
    --plan unet256/bf16_compile_clgrad_clgradconv_forcelayout unet256/bf16_compile_clgrad_clgradconv \
    --out "$OUT/gpu_h200_forcelayout.json" 2>&1 | grep -v "^ \|^---" | tee -a "$OUT/log.txt"
LEFT=$((BUDGET - SECONDS))
echo "seconds left for the cost rows: $LEFT" | tee -a "$OUT/log.txt"
if [ "$LEFT" -gt 120 ]; then
  timeout $((LEFT - 10)) python3 benchmarks/gpu_cost.py --device cuda --repeats 3 --rngs torch philox --device-rows \
      --out "$OUT/gpu_cost_h200_device_rows.json" 2>&1 | grep -v "^ \|^---\|USDT" | tee -a "$OUT/log.txt"
fi
