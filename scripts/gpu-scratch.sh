#!/usr/bin/env bash
# iFairy against LLaMA trained from scratch at equal size on a GPU machine
# (docs/RESULTS.md, issue 17 item 6): the two 25.6M-parameter models of
# examples/configs/{ifairy,llama}-25m.json, each in full precision and
# quantized (iFairy's own 2-bit weights and int8 activations; BitNet b1.58
# ternary for LLaMA), by the same trainer on the same tokens: the source
# text of scripts/code-corpus.sh, byte-level (the synthetic tokenizer of
# synth_gguf), the held-out loss on later crates' text. Carried in FOLDER
# (.devs, made by scripts/gpu-pack-scratch.sh): fairyc.xz, tok.gguf,
# code-train.txt.xz, code-heldout.txt.xz. The curves go to $OUT (or .dev).
# Settings: STEPS (500), BATCH (32 windows of 512 tokens), LR (2e-3),
# LIMIT (seconds of training a run may take, 120), RUNS (model:quant ...).
set -uo pipefail
cd "$(dirname "$0")/.."
folder=${FOLDER:-.devs} out=${OUT:-.dev}
mkdir -p .dev "$out"
for f in fairyc code-train.txt code-heldout.txt; do xz -d -c "$folder/$f.xz" > ".dev/$f"; done
chmod +x .dev/fairyc
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for run in ${RUNS:-ifairy:native ifairy:float llama:none llama:ternary}; do
  model=${run%%:*} quant=${run##*:}
  echo "== $model, --quant $quant"
  .dev/fairyc train --init random --config "examples/configs/$model-25m.json" --tokenizer "$folder/tok.gguf" \
    --quant "$quant" --data .dev/code-train.txt --eval-data .dev/code-heldout.txt \
    --steps "${STEPS:-500}" --seq 512 --grad-accum "${BATCH:-32}" --lr "${LR:-2e-3}" --warmup 50 \
    --schedule two-phase --weight-decay 0.1 --clip 1.0 --eval-windows 64 --eval-every 100 --seed 0 \
    --device cuda --gpus 1 --time-limit "${LIMIT:-120}" \
    --loss-csv "$out/scratch-$model-$quant.csv" -o ".dev/scratch-$model-$quant.fairy" 2>&1 \
    | grep -E "parameters|held-out loss|trained|error"
done
