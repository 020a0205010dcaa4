#!/usr/bin/env bash
# Variants of fairyc decoding one W2 artifact, alternated in one call on one
# GPU (A/B for docs/BENCHMARKS.md). Each argument is a variant: a fairyc
# executable (or an .xz of one), optionally after environment settings:
#   bash scripts/gpu-decode-ab.sh .dev/fairyc "FAIRYC_NO_FUSION=norms .dev/fairyc" .devf/fairyc-old.xz
# The artifact is the synthetic SmolLM2-shaped model compiled to QUANT (w2)
# by the first variant's fairyc; each variant decodes N (256) greedy tokens
# ROUNDS (2) times with CUDA-graph replay and, unless GRAPHS=on, without
# (FAIRYC_NO_GRAPH=1).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
quant=${QUANT:-w2} N=${N:-256} rounds=${ROUNDS:-2}
# shellcheck source=scripts/ab-variants.sh
. scripts/ab-variants.sh
unpack_variants "$@"
read -r -a first <<< "${variants[0]}"
synthetic=.dev/smol49k.gguf
[ -e "$synthetic" ] || .dev/synth_gguf "$synthetic" 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
artifact=.dev/smol49k-$quant.fairy
"${first[-1]}" compile "$synthetic" --quant "$quant" -o "$artifact" > /dev/null || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for round in $(seq "$rounds"); do
  for variant in "${variants[@]}"; do
    for graphs in ${GRAPHS:-on off}; do
      flags=()
      [ "$graphs" = off ] && flags=(FAIRYC_NO_GRAPH=1)
      # shellcheck disable=SC2086 # a variant's words are its settings and its executable
      rate=$(env "${flags[@]}" $variant run "$artifact" --backend cuda -n "$N" -p "The capital of France is" 2>&1 >/dev/null |
        grep -a -o "decode steps in [^)]*)")
      echo "round $round, $variant, graphs $graphs: $rate"
    done
  done
done
