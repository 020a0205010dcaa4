#!/usr/bin/env bash
# `fairyc ppl` with each run's loss computed on the GPU (issue 18), on a GPU
# machine, from the folder FOLDER (.devs by default: fairyc, the
# synth_gguf example, the corpus and, where BASELINE names one, an earlier
# fairyc.xz whose ppl copied the logits back and scored them on the host):
# the synthetic SmolLM2-shaped model and 4 LLaMA-7B blocks at W2, scored by
# both builds and by this one at several --batch sizes, two rounds; then
# decoding (256 tokens: the baseline, and this build with dp4a and with
# tensor-core products) and a 513-token prompt (dp4a and tensor cores);
# then, where the folder has them, the cuda test executable (the
# conformance suite on the GPU) and the training test, whose held-out
# evaluation scores the same way. What each printed goes to OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
FOLDER=${FOLDER:-.devs} OUT=${OUT:-.dev}
mkdir -p .dev "$OUT"
for f in "$FOLDER"/*.xz; do xz -dc "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/*
export FAIRYC_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
.dev/synth_gguf .dev/smol.gguf 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
.dev/synth_gguf .dev/l4.gguf 4096 11008 4 32 128 32 f16 vocab=32000 > /dev/null
for m in smol l4; do
  .dev/fairyc compile ".dev/$m.gguf" --quant w2 -o ".dev/$m.fairy" > /dev/null 2>&1 || echo "compile $m failed"
done
ppl() { "$1" ppl ".dev/$2.fairy" --text "$FOLDER/corpus.txt" --ctx 512 --device cuda "${@:3}" 2>&1 |
  grep -a '^perplexity'; }
echo "== ppl, 64 windows of 512 tokens"
for round in 1 2; do for m in smol l4; do
  if [ -n "${BASELINE:-}" ]; then
    echo "round $round $m $BASELINE: $(ppl ".dev/$(basename "$BASELINE" .xz)" $m --max-windows 64)"
  fi
  for batch in 512 2048 4096; do
    echo "round $round $m --batch $batch: $(ppl .dev/fairyc $m --max-windows 64 --batch $batch)"
  done
done; done
echo "== ppl, the whole corpus, the default batch"
for m in smol l4; do echo "$m: $(ppl .dev/fairyc $m)"; done
echo "== decoding, dp4a and tensor cores"
decode() { .dev/fairyc run ".dev/$1.fairy" --backend cuda "${@:2}" -n 256 -p 'The capital of France is' 2>&1 >/dev/null |
  grep -a -o 'decode steps in [^)]*)'; }
decode_with() { "$1" run ".dev/$2.fairy" --backend cuda --int8-products dp4a -n 256 -p 'The capital of France is' 2>&1 >/dev/null |
  grep -a -o 'decode steps in [^)]*)'; }
for round in 1 2; do for m in l4 smol; do
  if [ -n "${BASELINE:-}" ]; then
    echo "round $round $m $BASELINE: $(decode_with ".dev/$(basename "$BASELINE" .xz)" $m)"
  fi
  for p in dp4a tensor-cores; do echo "round $round $m $p: $(decode $m --int8-products $p)"; done
  echo "round $round $m dp4a, ropes unfolded: $(FAIRYC_NO_FUSION=ropes decode $m --int8-products dp4a)"
done; done
echo "== greedy text on dp4a (md5 of 64 tokens): this build, its ropes unfolded${BASELINE:+, the baseline}"
text() { "$1" run ".dev/$2.fairy" --backend cuda --int8-products dp4a -n 64 -p 'The capital of France is' \
  2>/dev/null | md5sum | cut -c1-12; }
for m in l4 smol; do
  line="$m: $(text .dev/fairyc $m) $(FAIRYC_NO_FUSION=ropes text .dev/fairyc $m)"
  [ -n "${BASELINE:-}" ] && line="$line $(text ".dev/$(basename "$BASELINE" .xz)" $m)"
  echo "$line"
done
echo "== a 513-token prompt"
prompt=$(tr -s ' \n' ' ' < "$FOLDER/corpus.txt" | cut -d' ' -f1-106)
for m in l4 smol; do for p in dp4a tensor-cores; do
  echo "prompt $m $p: $(.dev/fairyc run ".dev/$m.fairy" --backend cuda --int8-products $p -n 1 -p "$prompt" \
    2>&1 >/dev/null | grep -a 'prompt tokens')"
done; done
if [ -x .dev/cuda-test ]; then
  echo "== the cuda tests (the conformance suite on the GPU)"
  timeout 200 .dev/cuda-test --nocapture > "$OUT/cuda-test.txt" 2>&1
  echo "rc $?"
  grep -E "cases run|captured|mismatch|test result|panicked|FAILED" "$OUT/cuda-test.txt" | head -20
fi
if [ -x .dev/train-test ]; then
  echo "== training on the GPU"
  timeout 200 .dev/train-test training_on_the_gpu --nocapture > "$OUT/train.txt" 2>&1
  echo "rc $?"
  grep -E "step 10:|test result|panicked" "$OUT/train.txt"
fi
