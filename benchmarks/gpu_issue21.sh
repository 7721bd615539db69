#!/bin/bash
# One GPU lease for issue 21's GPU rows (~8 min on one H200): the cost table on the device
# (benchmarks/gpu_cost.py: tuned solvers against the EOF-latent emulators and their 2-call students,
# Kolmogorov 64x64 and shallow water 128x256), then the 256x256 training step under torch.compile
# (benchmarks/gpu.py): the fifth round's variant (bf16 + channels-last + compile) and three changes to
# it, each with a profile of one compiled step by kernel. Writes everything to $OUT.
#   OUT=/tmp/o bash benchmarks/gpu_issue21.sh
# The machine's image lacks dask and zarr (sciffusion.emulators imports them): carry their py3.12 wheels in
# .whl (dask, partd, locket, zarr, numcodecs, donfig, google-crc32c; see ../.library/device/README.md).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
mkdir -p "$OUT"
(nvidia-smi; python3 -c "import torch,sys; print(torch.__version__, sys.version)") > "$OUT/log.txt" 2>&1
timeout 240 python3 benchmarks/gpu_cost.py --device cuda --out "$OUT/gpu_cost_h200.json" 2>&1 | tee -a "$OUT/log.txt"
timeout 320 python3 benchmarks/gpu.py --budget 300 --compile-reserve 45 --no-sample --profile-compiled \
    --plan unet256/bf16_compile unet256/bf16_compile_clgn unet256/bf16_compile_clgn_fused_whole \
    unet256/bf16_compile_b32 --out "$OUT/gpu_h200_compile.json" 2>&1 | grep -v "^ \|^---" | tee -a "$OUT/log.txt"
ls -la "$OUT"
