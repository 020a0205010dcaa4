#!/usr/bin/env bash
# Two fairyc builds' decoding of one W2 artifact, alternated in one call on
# one GPU (A/B for docs/BENCHMARKS.md): `bash scripts/gpu-decode-ab.sh
# OLD NEW` with two fairyc executables (or .xz files of them). The artifact is
# the synthetic SmolLM2-shaped model compiled to QUANT (w2) by NEW; each build
# decodes N (256) greedy tokens ROUNDS (2) times with CUDA-graph replay and
# without (FAIRYC_NO_GRAPH=1).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
unpacked() {
  case "$1" in
    *.xz) local out=.dev/$(basename "$1" .xz); xz -d -c "$1" > "$out" && chmod +x "$out" && echo "$out" ;;
    *) echo "$1" ;;
  esac
}
old=$(unpacked "$1") new=$(unpacked "$2")
quant=${QUANT:-w2} N=${N:-256} rounds=${ROUNDS:-2}
synthetic=.dev/smol49k.gguf
[ -e "$synthetic" ] || .dev/synth_gguf "$synthetic" 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
artifact=.dev/smol49k-$quant.fairy
"$new" compile "$synthetic" --quant "$quant" -o "$artifact" > /dev/null || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for round in $(seq "$rounds"); do
  for build in "$old" "$new"; do
    for graphs in on off; do
      flags=()
      [ "$graphs" = off ] && flags=(FAIRYC_NO_GRAPH=1)
      rate=$(env "${flags[@]}" "$build" run "$artifact" --backend cuda -n "$N" -p "The capital of France is" 2>&1 >/dev/null |
        grep -a -o "decode steps in [^)]*)")
      echo "round $round, $(basename "$build"), graphs $graphs: $rate"
    done
  done
done
