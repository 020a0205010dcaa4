#!/usr/bin/env bash
# Whole models on a GPU machine with no Rust toolchain, from .devr/
# (`scripts/gpu-pack.sh --models`; the device tool carries it): the W1
# SmolLM2 artifact (greedy text, prompt and decode rates,
# perplexity of a few windows) on the cuda backend beside the LLVM CPU
# backend, and a LLaMA-7B-shaped W2 stack generated and compiled here.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
for f in .devr/*.xz; do xz -d -c "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/fairyc .dev/synth_gguf
# (The W2 artifact and fairyc together are over the 64 MiB a call carries.)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
prompt="The capital of France is"
for backend in cuda llvm; do
  echo "== W1 SmolLM2: run --backend $backend"
  .dev/fairyc run .dev/w1.fairy -p "$prompt" -n 64 --backend "$backend" 2>&1 | tail -2
  echo "== W1 SmolLM2: ppl --backend $backend"
  .dev/fairyc ppl .dev/w1.fairy --text .devr/corpus.txt --ctx 256 --max-windows 8 --backend "$backend" 2>&1 | tail -1
done
echo "== LLaMA-7B-shaped W2 stack (2 blocks)"
.dev/synth_gguf .dev/llama7b.gguf 4096 11008 2 32 128 f16 || exit 1
.dev/fairyc compile .dev/llama7b.gguf --quant w2 -o .dev/llama7b-w2.fairy 2>&1 | tail -1
words=$(tr -s ' \n' ' ' < .devr/corpus.txt | cut -d' ' -f201-224)
for backend in cuda llvm; do
  echo "== 7B-shaped W2: run --backend $backend"
  .dev/fairyc run .dev/llama7b-w2.fairy -p "$words" -n 64 --backend "$backend" 2>&1 | tail -1
done
