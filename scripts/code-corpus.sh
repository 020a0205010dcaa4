#!/usr/bin/env bash
# Builds a corpus of source text from the package registry (crates.io): the
# Rust files of the crates this workspace's Cargo.lock pins (the archives
# `cargo fetch` keeps in ~/.cargo/registry/cache), crate by crate in name
# order, files in archive order, those under 200 kB. Writes OUT/train.txt (the first TRAIN_MB megabytes) and
# OUT/heldout.txt (the next HELDOUT_MB, from crates after those that
# trained): text for training models from scratch, never documentation.
# Settings: OUT (.dev/code), TRAIN_MB (24), HELDOUT_MB (1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.dev/code}
train=$((${TRAIN_MB:-24} * 1000000)) heldout=$((${HELDOUT_MB:-1} * 1000000))
cargo fetch --locked 2>/dev/null
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/ | head -1)
mkdir -p "$out"
# Written beside the outputs, which replace the old only when whole.
: > "$out/train.txt.tmp" && : > "$out/heldout.txt.tmp"
target=$out/train.txt.tmp limit=$train
# The registry packages of Cargo.lock, as their archives' names.
crates=$(awk '/^name = / { name = $3 } /^version = / { version = $3 }
  /^source = "registry/ { gsub(/"/, "", name); gsub(/"/, "", version); print name "-" version ".crate" }' \
  Cargo.lock | LC_ALL=C sort)
for crate in $crates; do
  size=$(stat -c %s "$target")
  if [ "$size" -ge "$limit" ]; then
    [ "$target" = "$out/heldout.txt.tmp" ] && break
    target=$out/heldout.txt.tmp limit=$heldout
  fi
  tar -tzvf "$registry/$crate" | awk '$3 < 200000 && $NF ~ /\.rs$/ { print $NF }' \
    | xargs -r tar -xzOf "$registry/$crate" >> "$target"
done
truncate -s "$train" "$out/train.txt.tmp"
truncate -s "$heldout" "$out/heldout.txt.tmp"
mv "$out/train.txt.tmp" "$out/train.txt" && mv "$out/heldout.txt.tmp" "$out/heldout.txt"
ls -l "$out"
