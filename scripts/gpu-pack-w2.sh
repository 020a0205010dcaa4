#!/usr/bin/env bash
# Packs the W2 SmolLM2 artifact for a GPU machine in two parts, since it and
# fairyc together are over the 64 MiB one device call carries: .devw2a/
# holds the first part of the xz-compressed artifact, .devw2b/ the rest with
# fairyc and the corpus. The device machine keeps ignored files between
# calls while it stays warm, so carry .devw2a in one call and .devw2b in the
# next (within its idle time), which runs scripts/gpu-w2.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
rm -rf .devw2a .devw2b && mkdir -p .devw2a .devw2b
xz -6 -T0 -c models/smollm2-w2.fairy > .devw2b/w2.fairy.xz
split -b 40M .devw2b/w2.fairy.xz .devw2b/w2.part.
rm .devw2b/w2.fairy.xz
mv .devw2b/w2.part.aa .devw2a/
strip -o .devw2b/fairyc target/release/fairyc
xz -6 -T0 .devw2b/fairyc
cp ../shared/corpus/public.txt .devw2b/corpus.txt
du -sh .devw2a .devw2b
