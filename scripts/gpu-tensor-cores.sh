#!/usr/bin/env bash
# The int8 products' two designs on a GPU machine, from the folder
# scripts/gpu-pack.sh fills (FOLDER, .dev-a by default): design (b), tensor
# cores, against design (a), dp4a, on the same codes (the kernel test), on
# every folded variant against the reference (the paired cases), as GEMVs
# (cuda_gemv, table a), decoding and a 513-token prompt of the synthetic
# SmolLM2-shaped model and of 4 LLaMA-7B blocks at W2 (tables b and c), and
# the tiny models; then the 7B blocks decoded with the prologue and the
# norm left unfolded (FAIRYC_NO_FUSION). What each printed goes to OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
FOLDER=${FOLDER:-.dev-a} OUT=${OUT:-.dev}
mkdir -p .dev "$OUT"
for f in "$FOLDER"/*.xz; do xz -dc "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/*
export FAIRYC_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== the kernels on the same codes; the paired products (dp4a and tensor cores)"
timeout 120 .dev/cuda-test tensor_core paired_int8 --nocapture > "$OUT/cuda-test.txt" 2>&1
echo "rc $?"
grep -E "relative RMS difference|cases on tensor|test result|panicked|FAILED" "$OUT/cuda-test.txt"
echo "== GEMV (table a)"
timeout 90 .dev/cuda_gemv 100 > "$OUT/gemv.txt" 2>&1
grep -E "^device|^\| [0-9]" "$OUT/gemv.txt" | head -9
echo "== decoding and prompts (tables b and c)"
.dev/synth_gguf .dev/smol.gguf 576 1536 30 9 64 3 f32 vocab=49152 > /dev/null
.dev/synth_gguf .dev/l4.gguf 4096 11008 4 32 128 32 f16 vocab=32000 > /dev/null
for m in smol l4; do
  .dev/fairyc compile ".dev/$m.gguf" --quant w2 -o ".dev/$m.fairy" > /dev/null 2>&1 || echo "compile $m failed"
done
for round in 1 2; do for m in l4 smol; do for p in dp4a tensor-cores; do
  echo "round $round $m $p: $(.dev/fairyc run ".dev/$m.fairy" --backend cuda --int8-products $p -n 256 \
    -p 'The capital of France is' 2>&1 >/dev/null | grep -a -o 'decode steps in [^)]*)')"
done; done; done
prompt=$(tr -s ' \n' ' ' < "$FOLDER/corpus.txt" | cut -d' ' -f1-106)
for m in l4 smol; do for p in dp4a tensor-cores; do
  echo "prompt $m $p: $(.dev/fairyc run ".dev/$m.fairy" --backend cuda --int8-products $p -n 1 -p "$prompt" \
    2>&1 >/dev/null | grep -a 'prompt tokens')"
done; done
echo "== tiny models (dp4a and tensor cores)"
# The test compiles artifacts with the fairyc binary at the path it was built at.
built_at=$(grep -a -o -m1 '/[[:alnum:]/_.-]*/target/release/fairyc' .dev/models-test | head -1)
mkdir -p "$(dirname "$built_at")" && ln -sf "$PWD/.dev/fairyc" "$built_at"
timeout 150 .dev/models-test models_match_the_reference_on_the_gpu --nocapture > "$OUT/models.txt" 2>&1
echo "rc $?"
grep -E "relative RMS|match on cuda|test result|panicked" "$OUT/models.txt"
echo "== decoding with folds left out"
for m in l4 smol; do for v in prologues norms,prologues; do
  echo "unfold $m $v: $(FAIRYC_NO_FUSION=$v .dev/fairyc run ".dev/$m.fairy" --backend cuda -n 256 \
    -p 'The capital of France is' 2>&1 >/dev/null | grep -a -o 'decode steps in [^)]*)')"
done; done
