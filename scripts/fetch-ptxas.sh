#!/usr/bin/env bash
# Fetches NVIDIA's PTX assembler (ptxas, CUDA 12.9) from the PyPI package
# nvidia-cuda-nvcc-cu12 into models/tools/ (git-ignored). No GPU or CUDA
# toolkit is needed to run it: the tests assemble the cuda backend's PTX for
# sm_90 with it, so CI catches PTX the driver would reject, and register
# spills, on a machine without a GPU.
# Idempotent: does nothing when the checked file is already there.
set -euo pipefail
dest=models/tools/ptxas
sha=983b0e9283855979f42cebfd80d43f9b6e786eb84f03f7570bf941c4d3a3c461
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "error: scripts/fetch-ptxas.sh fetches the x86-64 ptxas; this host is $(uname -m)" >&2
  exit 1
fi
mkdir -p models/tools/.download
python3 -m pip download --quiet --no-deps --only-binary :all: --platform manylinux_2_12_x86_64 \
  -d models/tools/.download nvidia-cuda-nvcc-cu12==12.9.86
python3 - <<'PY'
import glob, os, zipfile
wheel = sorted(glob.glob("models/tools/.download/nvidia_cuda_nvcc_cu12-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    data = z.read("nvidia/cuda_nvcc/bin/ptxas")
tmp = "models/tools/ptxas.tmp"
with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
os.chmod(tmp, 0o755)
PY
# Checked before it takes its place.
if ! echo "$sha  $dest.tmp" | sha256sum -c --quiet -; then
  rm -f "$dest.tmp"
  echo "error: ptxas from nvidia-cuda-nvcc-cu12 12.9.86 did not match its SHA-256" >&2
  exit 1
fi
mv "$dest.tmp" "$dest"
rm -rf models/tools/.download
echo "fetched $dest"
