#!/usr/bin/env bash
# The W2 SmolLM2 artifact on a GPU machine (after scripts/gpu-pack-w2.sh;
# .devw2a/ came in the call before this one): greedy text, prompt and
# decode rates and the perplexity of a few windows on the cuda backend,
# beside the LLVM CPU backend and the reference.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
cat .devw2a/w2.part.* .devw2b/w2.part.* | xz -d > .dev/w2.fairy || exit 1
xz -d -c .devw2b/fairyc.xz > .dev/fairyc && chmod +x .dev/fairyc
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
prompt="The capital of France is"
for backend in cuda llvm; do
  echo "== W2 SmolLM2: run --backend $backend"
  .dev/fairyc run .dev/w2.fairy -p "$prompt" -n 64 --backend "$backend" 2>&1 | tail -2
done
words=$(tr -s ' \n' ' ' < .devw2b/corpus.txt | cut -d' ' -f201-292)
echo "== W2 SmolLM2, a 113-token prompt: run --backend cuda"
.dev/fairyc run .dev/w2.fairy -p "$words" -n 65 --backend cuda 2>&1 | tail -1
for backend in cuda reference; do
  echo "== W2 SmolLM2: ppl --backend $backend"
  .dev/fairyc ppl .dev/w2.fairy --text .devw2b/corpus.txt --ctx 256 --max-windows 8 --backend "$backend" 2>&1 | tail -1
done
