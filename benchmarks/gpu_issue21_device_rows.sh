#!/bin/bash
# Prepared for the next GPU lease of issue 21 (~9 min on one H200; not yet run): (1) the cost table like for like
# on the device - the tuned solvers with and without copying their output to host memory, the emulators' members
# through generate (host Dataset) and generate_tensor (left on the device), both member-stream kinds; (2) the
# 256x256 training step at the default channels-last gradients with and without inductor's
# force_layout_optimization (are the copies left in convolution backward the backward graph's own layouts?).
#   OUT=/tmp/o bash benchmarks/gpu_issue21_device_rows.sh
# Carry .whl (py3.12 wheels of dask, partd, locket, zarr, numcodecs, donfig, google-crc32c) and
# .venv/lib/python3.11/site-packages/torch_harmonics. The device returns at most 8 files per call: this writes 5.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
mkdir -p "$OUT"
(nvidia-smi; python3 -c "import torch,sys; print(torch.__version__, sys.version)") > "$OUT/log.txt" 2>&1
timeout 300 python3 benchmarks/gpu_cost.py --device cuda --repeats 3 --rngs torch philox --device-rows \
    --out "$OUT/gpu_cost_h200_device_rows.json" 2>&1 | grep -v "^ \|^---\|USDT" | tee -a "$OUT/log.txt"
timeout 230 python3 benchmarks/gpu.py --budget 210 --compile-reserve 60 --no-sample --profile-compiled \
    --plan unet256/bf16_compile_clgrad_clgradconv_forcelayout unet256/bf16_compile_clgrad_clgradconv \
    --out "$OUT/gpu_h200_forcelayout.json" 2>&1 | grep -v "^ \|^---" | tee -a "$OUT/log.txt"
