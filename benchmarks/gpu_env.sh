# Sourced by the GPU lease scripts (gpu_session.sh, gpu_darcy.sh) with DEV and W set: installs the carried
# py3.12 wheels in .whl (the GPU machine lacks xarray, dask, zarr...; see ../.library/device/README.md),
# sets PYTHONPATH and PY, makes the fresh output folder $W and records the GPU and torch versions there.
if [ -d .whl ] && [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
rm -rf "$W"; mkdir -p "$W"
(nvidia-smi || true) > "$W/gpu.txt" 2>&1
$PY -c "import torch,sys; print(torch.__version__, sys.version)" >> "$W/gpu.txt" 2>&1
