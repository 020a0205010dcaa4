#!/usr/bin/env bash
# Issue 18's tables (b) and (c) on a GPU machine, from .devd/
# (scripts/gpu-pack-decode.sh): synthetic models of SmolLM2-135M's shape
# (f32, and compiled to W1, W2, W3) and of LLaMA-7B's widths (BLOCKS blocks,
# its 32,000-token output layer; W2), random weights, each run by
# `fairyc run --backend cuda`: one sequence of 256 greedy tokens (decode,
# table b) and a prompt of about 512 tokens (prompt processing, table c);
# then the same models in bf16 through PyTorch (scripts/gpu-peer.py: a decode
# loop with a static KV cache, eager and as a CUDA graph, and the prompt in
# one forward pass), with the copy bandwidth the weight-streaming limits
# are computed from.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
for name in fairyc synth_gguf; do
  [ -x ".dev/$name" ] || { xz -d -c ".devd/$name.xz" > ".dev/$name" && chmod +x ".dev/$name"; }
done
BLOCKS=${BLOCKS:-4}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# 106 words of the corpus: 513 tokens with the synthetic tokenizer.
prompt=$(tr -s ' \n' ' ' < "${CORPUS:-.devd/corpus.txt}" | cut -d' ' -f1-106)
smol=.dev/smol49k.gguf
[ -e "$smol" ] || .dev/synth_gguf "$smol" 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
llama=.dev/llama7b-$BLOCKS.gguf
[ -e "$llama" ] || .dev/synth_gguf "$llama" 4096 11008 "$BLOCKS" 32 128 32 f16 vocab=32000 > /dev/null
for spec in "smollm2:$smol:none w1 w2 w3" "llama7b-$BLOCKS-blocks:$llama:w2"; do
  IFS=: read -r tag source quants <<< "$spec"
  for quant in $quants; do
    model=$source
    if [ "$quant" != none ]; then
      model=.dev/$tag-$quant.fairy
      [ -e "$model" ] || .dev/fairyc compile "$source" --quant "$quant" -o "$model" > /dev/null 2>&1
    fi
    echo "== $tag $quant ($(du -b "$model" | cut -f1) bytes)"
    .dev/fairyc run "$model" --backend cuda -n 256 -p "The capital of France is" 2>&1 > /dev/null |
      grep -a "decode steps" | sed 's/^/decode: /'
    .dev/fairyc run "$model" --backend cuda -n 1 -p "$prompt" 2>&1 > /dev/null |
      grep -a "prompt tokens" | sed 's/^/prompt: /'
  done
done
# PEERS=0 leaves the PyTorch peers out (a call that ran them already).
[ "${PEERS:-1}" = 0 ] && exit 0
python3 scripts/gpu-peer.py --shape smollm2 --layers 30 --vocab 49152 --steps 256 --no-gemv
python3 scripts/gpu-peer.py --shape llama7b --layers "$BLOCKS" --vocab 32000 --steps 256 --no-gemv
