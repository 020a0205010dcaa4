#!/usr/bin/env bash
# Fetches NVIDIA's PTX assembler (ptxas, CUDA 12.9) from the PyPI package
# nvidia-cuda-nvcc-cu12 into models/tools/ (git-ignored). No GPU or CUDA
# toolkit is needed to run it: the tests assemble the cuda backend's PTX for
# sm_90 with it, so CI catches PTX the driver would reject, and register
# spills, on a machine without a GPU.
set -euo pipefail
if [ "$(uname -m)" != x86_64 ]; then
  echo "error: scripts/fetch-ptxas.sh fetches the x86-64 ptxas; this host is $(uname -m)" >&2
  exit 1
fi
mkdir -p models/tools
bash "$(dirname "$0")/fetch-from-wheel.sh" nvidia-cuda-nvcc-cu12==12.9.86 \
  nvidia/cuda_nvcc/bin/ptxas models/tools/ptxas \
  983b0e9283855979f42cebfd80d43f9b6e786eb84f03f7570bf941c4d3a3c461 \
  --only-binary :all: --platform manylinux_2_12_x86_64
chmod +x models/tools/ptxas
