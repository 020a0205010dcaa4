#!/usr/bin/env bash
# Packs what scripts/gpu-scratch.sh runs on a GPU machine into .devs/ (git
# ignores it; one device call carries it): fairyc, stripped and
# xz-compressed, the synthetic byte-level tokenizer (synth_gguf) and the
# crates' source text of scripts/code-corpus.sh, xz-compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo build --release --locked -p fairyc-frontend --example synth_gguf
rm -rf .devs && mkdir -p .devs
strip -o .devs/fairyc target/release/fairyc && xz -6 -T0 .devs/fairyc
target/release/examples/synth_gguf .devs/tok.gguf 64 128 1 1 64 f32 >/dev/null
OUT=.dev/code bash scripts/code-corpus.sh >/dev/null
for part in train heldout; do xz -9 -T0 -c ".dev/code/$part.txt" > ".devs/code-$part.txt.xz"; done
du -sh .devs
