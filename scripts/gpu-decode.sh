#!/usr/bin/env bash
# Decoding on a GPU machine with and without CUDA-graph replay (issue 18,
# item 2), from fairyc and synth_gguf unpacked into WORK (.dev/acc, as
# scripts/gpu-accuracy.sh leaves them):
#   - one sequence (`fairyc run --backend cuda`, greedy, N tokens) of each
#     MODEL at each QUANT, with replay and with FAIRYC_NO_GRAPH=1, its rate
#     and how many of its runs were one graph launch (`launches=1` in the
#     -vv log);
#   - the teacher's lockstep generation (256 rows in lockstep, one step
#     of the W2 student), its per-batch line and its replays.
# MODELS defaults to a synthetic model of SmolLM2's shape (f32, 49,152
# tokens): the same step as the real model's, without carrying it.
set -uo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-.dev/acc} N=${N:-256}
mkdir -p .dev
synthetic=.dev/smol49k.gguf
[ -e "$synthetic" ] || "$W/synth_gguf" "$synthetic" 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for model in ${MODELS:-$synthetic}; do
  for quant in ${QUANTS:-none w2}; do
    for graphs in on off; do
      flags=()
      [ "$graphs" = off ] && flags=(FAIRYC_NO_GRAPH=1)
      env "${flags[@]}" "$W/fairyc" -vv run "$model" --quant "$quant" --backend cuda -n "$N" \
        -p "The capital of France is" > .dev/decode.out 2> .dev/decode.log
      echo "== $(basename "$model") $quant, graphs $graphs (exit $?): $(grep -c 'cuda run launches=1 ' .dev/decode.log) of" \
        "$(grep -c 'cuda run ' .dev/decode.log) runs one launch; $(grep -c 'could not be captured' .dev/decode.log) refusals"
      grep -a "decode steps in" .dev/decode.log | tail -1
      grep -a "could not be captured" .dev/decode.log | head -1
    done
  done
done
echo "== the teacher's lockstep generation (256 rows, 512 steps), W2 student"
rm -f .dev/t.tok
"$W/fairyc" -vv train "$synthetic" --quant w2 --distill --teacher-sequences 256 --teacher-batch 256 \
  --teacher-cache .dev/t.tok --steps 1 --seq 512 --grad-accum 1 --eval-windows 1 --device cuda --gpus 1 \
  -o .dev/t.fairy > .dev/teacher.log 2>&1
echo "exit $?: $(grep -c 'cuda run launches=1 ' .dev/teacher.log) of $(grep -c 'cuda run ' .dev/teacher.log) runs one launch;" \
  "$(grep -c 'could not be captured' .dev/teacher.log) refusals"
grep -a -i "run_ms\|teacher generated\|could not be captured" .dev/teacher.log | head -4
grep -a "cuda run " .dev/teacher.log | sed -n '600,603p'
