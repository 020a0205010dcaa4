#!/usr/bin/env bash
# Packs what the GPU scripts run on a GPU machine (no Rust toolchain there)
# into folders git ignores, stripped and xz-compressed (the GPU machine has
# xz, not zstd), each under the 64 MiB one device call may carry, so each
# is one call:
#   .dev-a/  fairyc, the cuda and model test executables, the
#            cuda_gemv example (kernel timings), synth_gguf and the corpus
#            (scripts/gpu-tensor-cores.sh too),
#   .dev-b/  fairyc, the autodiff, training-API and batch test executables
#            (both for scripts/gpu-check.sh, which runs what it finds);
#   .devr/   fairyc, the synth_gguf example, the W1 SmolLM2 artifact and the
#            corpus, for scripts/gpu-models.sh and scripts/gpu-train.sh
#            (needs models/smollm2-w1.fairy: `fairyc compile ... --quant w1`);
#   .devt/   fairyc, synth_gguf, the cuda_products example, the corpus and,
#            where AUTHORS_REPO names a
#            clone of github.com/PKULab1806/Fairy2i-W2, the authors' QAT
#            modules, for scripts/gpu-train-bench.sh and
#            scripts/gpu-step-kernels.sh (the authors' code is never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo build --release --locked -p fairyc-frontend --example synth_gguf
cargo build --release --locked -p fairyc-backends --example cuda_gemv
cargo build --release --locked -p fairyc-backends --example cuda_products
executables=$(cargo test --release --locked --workspace --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
pick() { echo "$executables" | grep "/$1-[0-9a-f]*$" | head -1; }
pack() {
  local folder=$1 name=$2 path=$3
  strip -o "$folder/$name" "$path"
  xz -6 -T0 "$folder/$name"
}
rm -rf .dev-a .dev-b .devr .devt && mkdir -p .dev-a .dev-b .devr .devt
pack .dev-a fairyc target/release/fairyc
pack .dev-a cuda-test "$(pick cuda)"
pack .dev-a models-test "$(pick conformance_models)"
pack .dev-a cuda_gemv target/release/examples/cuda_gemv

pack .dev-b autodiff-test "$(pick autodiff)"
pack .dev-b train-test "$(pick train_api)"
pack .dev-b batch-test "$(pick batch)"
cp .dev-a/fairyc.xz .dev-b/
cp ../shared/corpus/public.txt .dev-b/corpus.txt
cp .dev-a/fairyc.xz .devr/
pack .devr synth_gguf target/release/examples/synth_gguf
cp .devr/synth_gguf.xz .dev-a/
cp ../shared/corpus/public.txt .dev-a/corpus.txt
xz -6 -T0 -c models/smollm2-w1.fairy > .devr/w1.fairy.xz
cp ../shared/corpus/public.txt .devr/corpus.txt
cp .dev-a/fairyc.xz .devr/synth_gguf.xz ../shared/corpus/public.txt .devt/
mv .devt/public.txt .devt/corpus.txt
pack .devt cuda_products target/release/examples/cuda_products
if [ -n "${AUTHORS_REPO:-}" ]; then
  mkdir -p .devt/authors
  for f in qat_modules.py quantization.py; do
    git -C "$AUTHORS_REPO" show "HEAD:model_module/$f" > ".devt/authors/$f"
  done
fi
du -sh .dev-a .dev-b .devr .devt
