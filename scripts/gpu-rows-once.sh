#!/usr/bin/env bash
# The int8 products with their input rows quantized once, by a kernel of
# their own, against each block quantizing them (issue 18), on a GPU machine,
# from the folder scripts/gpu-pack.sh fills (FOLDER, .dev-a by default): the
# paired cases against the reference both ways and on tensor cores, and the
# kernel test of the two designs; the GEMV (cuda_gemv, table a, its "row
# quantized once" column); decoding and a 513-token prompt (dp4a and tensor
# cores) of the synthetic
# SmolLM2-shaped model and of 4 LLaMA-7B blocks at W2 with
# --row-quantization by-width (the default), in-each-block and once, two
# rounds alternated; and the tiny models. With BASELINE (a fairyc.xz in
# FOLDER, such as an earlier build's), decoding alternates between it and
# this build instead, both at the default, and the tiny models (whose test
# executable such a folder may leave out) are skipped. What each printed
# goes to OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
FOLDER=${FOLDER:-.dev-a} OUT=${OUT:-.dev}
mkdir -p .dev "$OUT"
for f in "$FOLDER"/*.xz; do xz -dc "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/*
export FAIRYC_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== the paired products (rows quantized in each block, once, tensor cores); the two designs"
timeout 150 .dev/cuda-test paired_int8 tensor_core --nocapture > "$OUT/cuda-test.txt" 2>&1
echo "rc $?"
grep -E "relative RMS difference|cases on tensor|test result|panicked|FAILED" "$OUT/cuda-test.txt"
echo "== GEMV (table a)"
timeout 150 .dev/cuda_gemv 100 > "$OUT/gemv.txt" 2>&1
grep -v "^|---" "$OUT/gemv.txt"
echo "== decoding and prompts (tables b and c)"
.dev/synth_gguf .dev/smol.gguf 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
.dev/synth_gguf .dev/l4.gguf 4096 11008 4 32 128 32 f16 vocab=32000 > /dev/null
for m in smol l4; do
  .dev/fairyc compile ".dev/$m.gguf" --quant w2 -o ".dev/$m.fairy" > /dev/null 2>&1 || echo "compile $m failed"
done
decode() { "$1" run ".dev/$2.fairy" --backend cuda "${@:3}" -n 256 -p 'The capital of France is' 2>&1 >/dev/null |
  grep -a -o 'decode steps in [^)]*)'; }
for round in 1 2; do for m in l4 smol; do
  if [ -n "${BASELINE:-}" ]; then
    echo "round $round $m $BASELINE: $(decode ".dev/$(basename "$BASELINE" .xz)" $m)"
    echo "round $round $m this build: $(decode .dev/fairyc $m)"
  else
    for q in by-width in-each-block once; do
      echo "round $round $m $q: $(decode .dev/fairyc $m --row-quantization $q)"
    done
  fi
done; done
prompt=$(tr -s ' \n' ' ' < "$FOLDER/corpus.txt" | cut -d' ' -f1-106)
for m in l4 smol; do for q in "--row-quantization by-width" "--row-quantization in-each-block" \
  "--int8-products tensor-cores" "--int8-products tensor-cores --row-quantization in-each-block"; do
  echo "prompt $m $q: $(.dev/fairyc run ".dev/$m.fairy" --backend cuda $q -n 1 -p "$prompt" \
    2>&1 >/dev/null | grep -a 'prompt tokens')"
done; done
[ -n "${BASELINE:-}" ] && exit 0
echo "== tiny models"
# The test compiles artifacts with the fairyc binary at the path it was built at.
built_at=$(grep -a -o -m1 '/[[:alnum:]/_.-]*/target/release/fairyc' .dev/models-test | head -1)
mkdir -p "$(dirname "$built_at")" && ln -sf "$PWD/.dev/fairyc" "$built_at"
timeout 150 .dev/models-test models_match_the_reference_on_the_gpu --nocapture > "$OUT/models.txt" 2>&1
echo "rc $?"
grep -E "relative RMS|match on cuda|test result|panicked" "$OUT/models.txt"
