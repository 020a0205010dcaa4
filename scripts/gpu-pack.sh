#!/usr/bin/env bash
# Packs what the GPU scripts run on a GPU machine (no Rust toolchain there)
# into folders git ignores, xz-compressed (the GPU machine has xz, not
# zstd), each under the 64 MiB a call may carry:
#   .dev/   the test executables with GPU tests and fairyc, for
#           scripts/gpu-check.sh;
#   .devr/  fairyc, the synth_gguf example, the W1 SmolLM2 artifact and the
#           corpus, for scripts/gpu-models.sh (`--models`; needs
#           models/smollm2-w1.fairy: `fairyc compile ... --quant w1`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo build --release --locked -p fairyc-frontend --example synth_gguf
executables=$(cargo test --release --locked --workspace --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
rm -rf .dev && mkdir -p .dev
cp target/release/fairyc .dev/fairyc
pick() { echo "$executables" | grep "/$1-[0-9a-f]*$" | head -1; }
cp "$(pick cuda)" .dev/cuda-test
cp "$(pick conformance_models)" .dev/models-test
cp "$(pick autodiff)" .dev/autodiff-test
strip .dev/*
xz -6 -T0 .dev/*
du -ch .dev/* | tail -1
if [ "${1:-}" = "--models" ]; then
  rm -rf .devr && mkdir -p .devr
  cp .dev/fairyc.xz .devr/
  strip -o .devr/synth_gguf target/release/examples/synth_gguf
  xz -6 .devr/synth_gguf
  xz -6 -T0 -c models/smollm2-w1.fairy > .devr/w1.fairy.xz
  cp ../shared/corpus/public.txt .devr/corpus.txt
  du -ch .devr/* | tail -1
fi
