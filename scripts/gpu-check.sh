#!/usr/bin/env bash
# Runs fairyc's GPU tests on a machine with a CUDA GPU and no Rust
# toolchain, from the executables scripts/gpu-pack.sh packed into .dev-a/
# and .dev-b/ (one device call each): the cuda backend's conformance suite,
# whole tiny models and W1/W2/W3 artifacts, one training step, and a short
# training run, all against the reference on the CPU. It runs the tests of
# the folders named (`bash scripts/gpu-check.sh .dev-b`), by default of
# whichever came.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
folders=("$@")
[ ${#folders[@]} -gt 0 ] || folders=(.dev-*)
for folder in "${folders[@]}"; do
  for f in "$folder"/*.xz; do [ -e "$f" ] && xz -d -c "$f" > ".dev/$(basename "$f" .xz)"; done
done
chmod +x .dev/* 2>/dev/null || true
export FAIRYC_REQUIRE_GPU=1
# NCCL (the all-reduce test) with NVLink multicast off, as these machines require.
export NCCL_NVLS_ENABLE=0
# The training test reads ../shared/corpus/public.txt; a carried copy
# stands in for ../shared.
corpus=
for folder in "${folders[@]}"; do
  [ -z "$corpus" ] && [ -e "$folder/corpus.txt" ] && corpus=$folder/corpus.txt
done
if [ -n "$corpus" ]; then
  mkdir -p .dev/shared/corpus && cp "$corpus" .dev/shared/corpus/public.txt
  export FAIRYC_SHARED="$PWD/.dev/shared"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The tests that compile artifacts run the fairyc binary at the path it
# was built at.
for test in .dev/*-test; do
  [ -e "$test" ] || continue
  built_at=$(grep -a -o -m1 '/[[:alnum:]/_.-]*/target/release/fairyc' "$test" | head -1)
  if [ -n "$built_at" ] && [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -sf "$PWD/.dev/fairyc" "$built_at"
  fi
done
carried() {
  for folder in "${folders[@]}"; do [ -e "$folder/$1.xz" ] && return 0; done
  return 1
}
run() {
  carried "$1" || return 0
  echo "== $2"
  ".dev/$1" "${@:3}" --nocapture 2>&1 | grep -v "^$"
}
run cuda-test "conformance suite on cuda"
run models-test "tiny models and artifacts on cuda" models_match_the_reference_on_the_gpu
run batch-test "batched and lockstep sequences on cuda against each alone" match_each_alone_on_every_backend
run autodiff-test "one training step (loss and every gradient) on cuda" training_step_on_the_gpu
run train-test "a training run on cuda against the cpu" training_on_the_gpu
if carried cuda_gemv; then
  echo "== quantized GEMV kernels against cuBLAS bf16 and a copy (table a)"
  .dev/cuda_gemv 200
fi
