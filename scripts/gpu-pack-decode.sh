#!/usr/bin/env bash
# Packs, into .devd/ (or PACK=.devs, another folder git ignores; one device
# call), what a GPU check of
# decoding needs: fairyc and synth_gguf (scripts/gpu-decode.sh, with
# WORK=.dev; scripts/gpu-decode-table.sh), the cuda_gemv example (the GEMV
# table), the cuda and model test executables (scripts/gpu-check.sh .devd
# runs them, after unpacking all of it into .dev/) and the corpus (the
# prompt of scripts/gpu-decode-table.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo build --release --locked -p fairyc-frontend --example synth_gguf
cargo build --release --locked -p fairyc-backends --example cuda_gemv
executables=$(cargo test --release --locked --workspace --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
pick() { echo "$executables" | grep "/$1-[0-9a-f]*$" | head -1; }
dir=${PACK:-.devd}
rm -rf "$dir" && mkdir -p "$dir"
pack() { strip -o "$dir/$1" "$2" && xz -6 -T0 "$dir/$1"; }
pack fairyc target/release/fairyc
pack synth_gguf target/release/examples/synth_gguf
pack cuda_gemv target/release/examples/cuda_gemv
pack cuda-test "$(pick cuda)"
pack models-test "$(pick conformance_models)"
cp ../shared/corpus/public.txt "$dir/corpus.txt"
du -cb "$dir"
