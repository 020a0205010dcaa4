#!/usr/bin/env bash
# QAT throughput on a GPU machine, from .devr/ (scripts/gpu-pack.sh): a
# synthetic model of SmolLM2-135M's shape (30 blocks of 576, 9 heads over 3
# KV heads; a 275-token vocabulary) trained at W2 on ../shared/corpus text
# with its forward and backward passes on cuda and on the machine's CPU
# cores, same flags; each prints its tokens/s (CUDA_STEPS, CPU_STEPS: steps
# of each, 0 to leave one out).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
for f in .devr/*.xz; do xz -d -c "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/fairyc .dev/synth_gguf
.dev/synth_gguf .dev/smol.gguf 576 1536 30 9 64 3 f32 || exit 1
for run in "cuda ${CUDA_STEPS:-20}" "cpu ${CPU_STEPS:-3}"; do
  set -- $run
  [ "$2" -gt 0 ] || continue
  echo "== train --device $1, $2 steps of 256 tokens"
  /usr/bin/time -f "%e s wall" .dev/fairyc train .dev/smol.gguf --quant w2 --data .devr/corpus.txt \
    --steps "$2" --seq 256 --eval-windows 1 --device "$1" -o ".dev/trained-$1.fairy" 2>&1 | tail -4
done
