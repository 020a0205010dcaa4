#!/usr/bin/env bash
# Where one QAT step's GPU time goes, kernel by kernel (docs/BENCHMARKS.md),
# on a GPU machine, from .devt/ (scripts/gpu-pack.sh): the bench's model
# (scripts/gpu-train-bench.sh) trained two steps with each launch its own
# (FAIRYC_NO_GRAPH=1) to count a step's launches from fairyc's debug log,
# then Nsight Compute over the second step alone (each kernel's own time,
# clocks left alone), summed by kernel by scripts/ncu-summary.py; the CSV
# goes to $OUT (or .dev). Settings: BATCH, SEQ (16, 1024).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
for f in .devt/*.xz; do xz -d -c "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/fairyc .dev/synth_gguf
BATCH=${BATCH:-16} SEQ=${SEQ:-1024}
export FAIRYC_NO_GRAPH=1
.dev/synth_gguf .dev/smol49k.gguf 576 1536 30 9 64 3 f32 vocab=49152 >/dev/null || exit 1
train() {
  "$@" train .dev/smol49k.gguf --quant w2 --data .devt/corpus.txt --steps 2 --seq "$SEQ" \
    --grad-accum "$BATCH" --eval-windows 1 --device cuda --gpus 1 -o .dev/kernels.fairy
}
# The runs before the second step (the held-out evaluation, the first step)
# and the second step's own launches. fairyc counts a product as one launch,
# where cuBLAS may launch two kernels (a split-K reduction): the window is
# about one step.
launches=$(train .dev/fairyc -vv 2>&1 | sed -n 's/.*cuda run launches=\([0-9]*\).*/\1/p' | head -3)
set -- $launches
eval_runs=${1:-} first=${2:-} second=${3:-}
[ -n "$second" ] || { echo "could not count the launches: $launches"; exit 1; }
echo "launches: evaluation $eval_runs, step 1 $first, step 2 $second"
csv=${OUT:-.dev}/ncu-step.csv
train ncu --clock-control none --csv --metrics gpu__time_duration.sum \
  --launch-skip $((eval_runs + first)) --launch-count "$second" .dev/fairyc > "$csv" 2>/dev/null
python3 scripts/ncu-summary.py "$csv"
