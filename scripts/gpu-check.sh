#!/usr/bin/env bash
# Runs fairyc's GPU checks on a machine with a CUDA GPU and no Rust
# toolchain, from binaries built elsewhere and packed into .dev/ by
# scripts/gpu-pack.sh.
# It runs the cuda backend's conformance suite, whole tiny models and
# W1/W2/W3 artifacts, and one training step, all against the reference.
set -uo pipefail
cd "$(dirname "$0")/.."
for f in .dev/*.xz; do [ -e "$f" ] && xz -d -f "$f"; done
chmod +x .dev/fairyc .dev/*-test 2>/dev/null || true
export FAIRYC_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The model test compiles artifacts with the fairyc binary at the path it
# was built at.
built_at=$(grep -a -o -m1 '/[[:alnum:]/_.-]*/target/release/fairyc' .dev/models-test | head -1)
if [ -n "$built_at" ] && [ ! -e "$built_at" ]; then
  mkdir -p "$(dirname "$built_at")" && ln -sf "$PWD/.dev/fairyc" "$built_at"
fi
echo "== conformance suite on cuda"
.dev/cuda-test --nocapture 2>&1 | grep -v "^$"
echo "== tiny models and artifacts on cuda"
.dev/models-test models_match_the_reference_on_the_gpu --nocapture 2>&1 | grep -v "^$"
echo "== one training step (loss and every gradient) on cuda"
.dev/autodiff-test training_step_on_the_gpu --nocapture 2>&1 | grep -v "^$"
