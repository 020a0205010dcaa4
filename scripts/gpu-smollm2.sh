#!/usr/bin/env bash
# The W2 SmolLM2 artifact on a GPU machine, from what scripts/gpu-check.sh
# unpacked into .dev/ (the fairyc binary) and the artifact's zstd stream in
# parts (.dev*/w2.part*, sent over consecutive calls): greedy text and
# decode speed on the cuda backend beside the CPU backends, and perplexity
# of a few windows of .dev*/corpus.txt on cuda and on the reference.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -s .dev/w2.fairy ]; then
  cat $(ls .dev*/w2.part* | sort -t. -k3) | zstd -q -d -o .dev/w2.fairy || exit 1
fi
ls -l .dev/w2.fairy
prompt="The capital of France is"
for backend in cuda cranelift reference; do
  echo "== run --backend $backend"
  .dev/fairyc run .dev/w2.fairy -p "$prompt" -n 48 --backend "$backend" 2>&1 | tail -3
done
corpus=$(ls .dev*/corpus.txt 2>/dev/null | head -1)
if [ -n "$corpus" ]; then
  for backend in cuda reference; do
    echo "== ppl --backend $backend"
    /usr/bin/time -f "%e s" .dev/fairyc ppl .dev/w2.fairy --text "$corpus" --ctx 512 --max-windows 4 --backend "$backend" 2>&1 | tail -3
  done
fi
