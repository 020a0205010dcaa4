#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh runs on a GPU machine into .dev/ (git
# ignores it): the fairyc binary and the test executables with GPU tests,
# stripped and zstd-compressed, small enough for a 64 MiB transfer.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
executables=$(cargo test --release --locked --workspace --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
rm -rf .dev && mkdir -p .dev
cp target/release/fairyc .dev/fairyc
pick() { echo "$executables" | grep "/$1-[0-9a-f]*$" | head -1; }
cp "$(pick cuda)" .dev/cuda-test
cp "$(pick conformance_models)" .dev/models-test
cp "$(pick autodiff)" .dev/autodiff-test
strip .dev/*
zstd -q -T0 -19 --rm .dev/*
du -ch .dev/* | tail -1
