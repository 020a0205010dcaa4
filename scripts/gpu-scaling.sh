#!/usr/bin/env bash
# Data-parallel QAT on a machine of several GPUs (issue 20's checks,
# docs/SCALING.md), from .devt/ (scripts/gpu-pack.sh): the W2 step of a
# synthetic model of SmolLM2-135M's shape with its 49152-token vocabulary,
# batches of BATCH windows of SEQ tokens, on 1 GPU and on 2, 4, 8 (as many
# as the machine has), the same global batch each time, on more than one
# GPU with the optimizer replicated, sharded (--shard-optimizer) and with
# the masters sharded too (--shard-masters). Prints
# each run's tokens/s over the steps after its second (the first builds
# the programs) and its scaling efficiency against one GPU, and the
# largest relative difference of each run's step losses from one GPU's
# (the same data, so the same losses within summation order).
# Settings: BATCH, SEQ, STEPS (16, 1024, 8); GPUS, the counts to run (1 2 4 8).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
for f in .devt/*.xz; do [ -e "$f" ] && xz -d -c "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/fairyc .dev/synth_gguf
# NVLink multicast off, as these machines require (fairyc sets it too).
export NCCL_NVLS_ENABLE=0
# What an earlier call left is not this call's.
rm -f .dev/train-*.log .dev/loss-*.csv
BATCH=${BATCH:-16} SEQ=${SEQ:-1024} STEPS=${STEPS:-8}
have=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
.dev/synth_gguf .dev/smol49k.gguf 576 1536 30 9 64 3 f32 vocab=49152 || exit 1
runs=()
for gpus in ${GPUS:-1 2 4 8}; do
  [ "$gpus" -le "$have" ] || continue
  for shard in "" --shard-optimizer --shard-masters; do
    [ -n "$shard" ] && [ "$gpus" -eq 1 ] && continue
    case $shard in --shard-optimizer) run=${gpus}s ;; --shard-masters) run=${gpus}m ;; *) run=$gpus ;; esac
    runs+=("$run")
    echo "== fairyc train --device cuda --gpus $gpus $shard, $STEPS steps of $BATCH x $SEQ tokens"
    .dev/fairyc -v train .dev/smol49k.gguf --quant w2 --data .devt/corpus.txt --steps "$STEPS" \
      --seq "$SEQ" --grad-accum "$BATCH" --eval-windows 1 --device cuda --gpus "$gpus" $shard \
      --loss-csv ".dev/loss-$run.csv" -o ".dev/trained-$run.fairy" > ".dev/train-$run.log" 2>&1
    echo "exit $?"
    grep -v "step=" ".dev/train-$run.log" | tail -3
  done
done
python3 - "$BATCH" "$SEQ" "${runs[@]}" <<'PY'
import csv, os, re, sys
from datetime import datetime
batch, seq, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

def rate(gpus):
    steps = []
    for line in open(f".dev/train-{gpus}.log"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = re.match(r"\S*?(\d{4}-\d\d-\d\dT[\d:.]+)Z.* step=(\d+) ", line)
        if m:
            steps.append((int(m[2]), datetime.fromisoformat(m[1])))
    if len(steps) < 3:
        return None
    (s0, t0), (s1, t1) = steps[1], steps[-1]
    return (s1 - s0) * batch * seq / (t1 - t0).total_seconds()

def losses(gpus):
    path = f".dev/loss-{gpus}.csv"
    if not os.path.exists(path):
        return []
    return [float(r["loss"]) for r in csv.DictReader(open(path))]

base, one = (rate("1"), losses("1")) if "1" in runs else (None, [])
print("| GPUs | optimizer | tokens/s | efficiency | largest step-loss difference from 1 GPU |")
print("|---|---|---|---|---|")
for run in runs:
    gpus = int(run.rstrip("sm"))
    sharded = {"s": "sharded", "m": "sharded, masters too"}.get(run[-1], "replicated")
    r, l = rate(run), losses(run)
    eff = f"{r / (gpus * base):.2f}" if r and base else "-"
    diff = max((abs(a - b) / max(abs(a), 1.0) for a, b in zip(one, l)), default=None)
    diff = f"{diff:.1e} over {min(len(one), len(l))} steps" if diff is not None and run != "1" else "-"
    rate_text = f"{r:,.0f}" if r else "(no rate)"
    print(f"| {gpus} | {sharded} | {rate_text} | {eff} | {diff} |")
PY
