#!/bin/bash
# The second GPU lease for issue 21 (~9 min on one H200): (1) the 256x256 training step with the gradients into
# every GroupNorm made channels-last (benchmarks/gpu.py variant _clgrad), next to the earlier best variant in the
# same run, each with a profile by kernel; (2) the cost table (benchmarks/gpu_cost.py) with the member streams of
# both kinds (generate's rng="torch" and the counter-based rng="philox") and the seeds' decoding on the device,
# with a profile of one large-batch student call per kind. Writes everything to $OUT.
#   OUT=/tmp/o bash benchmarks/gpu_issue21_streams.sh
# Carry .whl (py3.12 wheels of dask, partd, locket, zarr, numcodecs, donfig, google-crc32c: the image lacks them)
# and .venv/lib/python3.11/site-packages/torch_harmonics (the shallow-water solver's pure-Python modules).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
mkdir -p "$OUT"
(nvidia-smi; python3 -c "import torch,sys; print(torch.__version__, sys.version)") > "$OUT/log.txt" 2>&1
timeout 260 python3 benchmarks/gpu.py --budget 240 --compile-reserve 60 --no-sample --profile-compiled \
    --plan unet256/bf16_compile_clgrad unet256/bf16_compile unet256/bf16_compile_clgrad_fused_whole \
    --out "$OUT/gpu_h200_clgrad.json" 2>&1 | grep -v "^ \|^---" | tee -a "$OUT/log.txt"
timeout 280 python3 benchmarks/gpu_cost.py --device cuda --repeats 3 --rngs torch philox --profile-generate \
    --out "$OUT/gpu_cost_h200_streams.json" 2>&1 | grep -v "^ \|^---\|USDT" | tee -a "$OUT/log.txt"
ls -la "$OUT"
