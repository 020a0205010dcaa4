#!/usr/bin/env bash
# Variants of fairyc's W2 QAT step, alternated in one call on one GPU (A/B for
# docs/BENCHMARKS.md). Each argument is a variant: a fairyc executable (or an
# .xz of one), optionally after environment settings:
#   bash scripts/gpu-train-ab.sh .devw/fairyc-old.xz .dev/fairyc "FAIRYC_NO_FUSION=roundings .dev/fairyc"
# Each trains the synthetic SmolLM2-shaped model (as scripts/gpu-train-bench.sh:
# 16 x 1024 tokens a step, AdamW, clipping) for 8 steps, ROUNDS (2) times,
# and prints its rate over steps 3-8 (the first builds the program) and its
# last loss. The corpus is CORPUS (.devt/corpus.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
rounds=${ROUNDS:-2} corpus=${CORPUS:-.devt/corpus.txt}
# shellcheck source=scripts/ab-variants.sh
. scripts/ab-variants.sh
unpack_variants "$@"
synthetic=.dev/smol49k.gguf
[ -e "$synthetic" ] || .dev/synth_gguf "$synthetic" 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for round in $(seq "$rounds"); do
  for variant in "${variants[@]}"; do
    # shellcheck disable=SC2086 # a variant's words are its settings and its executable
    env $variant -v train "$synthetic" --quant w2 --data "$corpus" --steps 8 --seq 1024 \
      --grad-accum 16 --eval-windows 1 --device cuda --gpus 1 -o .dev/ab.fairy > .dev/ab.log 2>&1
    python3 - "round $round, $variant" <<'PY'
import re, sys
from datetime import datetime
steps = []
for line in open(".dev/ab.log"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r"\S*?(\d{4}-\d\d-\d\dT[\d:.]+)Z.* step=(\d+) loss=(\S+)", line)
    if m:
        steps.append((int(m[2]), datetime.fromisoformat(m[1]), float(m[3])))
if len(steps) < 3:
    print(f"{sys.argv[1]}: no rate (see .dev/ab.log)")
else:
    (s0, t0, _), (s1, t1, l1) = steps[1], steps[-1]
    rate = (s1 - s0) * 16 * 1024 / (t1 - t0).total_seconds()
    print(f"{sys.argv[1]}: steps {s0 + 1}-{s1}: {rate:,.0f} tokens/s; loss {l1} at step {s1}")
PY
  done
done
