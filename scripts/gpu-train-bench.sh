#!/usr/bin/env bash
# QAT throughput on a GPU machine (docs/BENCHMARKS.md, issue 17's table),
# from .devt/ (scripts/gpu-pack.sh): fairyc's W2 QAT step on a synthetic
# model of SmolLM2-135M's shape with its 49152-token vocabulary (untied
# output layer), batches of BATCH windows of SEQ tokens, AdamW and clipping,
# beside PyTorch on the same model in the same run: plain bf16 training
# eager and compiled, and the Fairy2i authors' W2 QAT modules (carried in
# .devt/authors, fetched from github.com/PKULab1806/Fairy2i-W2 and never
# committed). fairyc's rate is over the steps after its second (the first
# builds the program); its peak memory is the GPU's used memory at its
# highest (nvidia-smi, every 100 ms) less the idle baseline, which counts
# the CUDA context and cached memory that PyTorch's max_memory_allocated
# (the peers' figure) leaves out. One GPU (--gpus 1): the resident step.
# Settings: BATCH, SEQ, STEPS (16, 1024, 8); MATMULS, the --gpu-matmul modes
# to run (bf16); ATTENTION, --gpu-attention (flash or products; by default
# fairyc's: flash with bf16); PEERS, the PyTorch modes (plain compiled authors; empty:
# fairyc alone); PROFILE=1 adds fairyc's profile, op by op; PRODUCTS=1 adds
# the step's dense products alone (the cuda_products example, with and
# without FAIRYC_GEMM_TUNE) beside PyTorch's (scripts/gpu-products.py).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
# fairyc may come beside the tests in .dev-b or in .devt (which wins).
for f in .dev-b/fairyc.xz .devt/*.xz; do [ -e "$f" ] && xz -d -c "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/fairyc .dev/synth_gguf
[ -e .dev/cuda_products ] && chmod +x .dev/cuda_products
BATCH=${BATCH:-16} SEQ=${SEQ:-1024} STEPS=${STEPS:-8}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
.dev/synth_gguf .dev/smol49k.gguf 576 1536 30 9 64 3 f32 vocab=49152 || exit 1
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
for matmul in ${MATMULS:-bf16}; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > .dev/mem.txt &
  watcher=$!
  echo "== fairyc train --device cuda --gpu-matmul $matmul, $STEPS steps of $BATCH x $SEQ tokens"
  .dev/fairyc -v train .dev/smol49k.gguf --quant w2 --data .devt/corpus.txt --steps "$STEPS" \
    --seq "$SEQ" --grad-accum "$BATCH" --eval-windows 1 --device cuda --gpus 1 --gpu-matmul "$matmul" \
    ${ATTENTION:+--gpu-attention "$ATTENTION"} -o .dev/trained.fairy > .dev/train.log 2>&1
  echo "exit $?"
  kill "$watcher"
  grep -v "step=" .dev/train.log | tail -4
  python3 - "$BATCH" "$SEQ" "$idle" <<'PY'
import re, sys
from datetime import datetime
batch, seq, idle = map(int, sys.argv[1:])
steps = []
for line in open(".dev/train.log"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r"\S*?(\d{4}-\d\d-\d\dT[\d:.]+)Z.* step=(\d+) loss=(\S+)", line)
    if m:
        steps.append((int(m[2]), datetime.fromisoformat(m[1]), float(m[3])))
if len(steps) >= 3:
    (s0, t0, _), (s1, t1, l1) = steps[1], steps[-1]
    rate = (s1 - s0) * batch * seq / (t1 - t0).total_seconds()
    print(f"steps {s0 + 1}-{s1}: {rate:,.0f} tokens/s; loss {steps[0][2]} at step 1, {l1} at step {s1}")
used = [int(x) for x in open(".dev/mem.txt") if x.strip().isdigit()]
if used:
    print(f"peak GPU memory {(max(used) - idle) / 1024:.1f} GiB above idle")
PY
done
if [ -n "${PROFILE:-}" ]; then
  echo "== fairyc's step, op by op (FAIRYC_PROFILE: each node waited for), 2 steps"
  FAIRYC_PROFILE=1 .dev/fairyc train .dev/smol49k.gguf --quant w2 --data .devt/corpus.txt --steps 2 \
    --seq "$SEQ" --grad-accum "$BATCH" --eval-windows 1 --device cuda --gpus 1 \
    ${ATTENTION:+--gpu-attention "$ATTENTION"} -o .dev/profiled.fairy 2>&1 \
    | sed -n '/time per op/,$p' | head -32
fi
if [ -n "${PRODUCTS:-}" ]; then
  for tune in "" 1; do
    echo "== the step's products alone${tune:+, FAIRYC_GEMM_TUNE}"
    env FAIRYC_PROFILE=1 ${tune:+FAIRYC_GEMM_TUNE=1} .dev/cuda_products 100 2>&1 | tail -7
  done
  python3 scripts/gpu-products.py
fi
for mode in ${PEERS-plain compiled authors}; do
  echo "== PyTorch: $mode"
  python3 scripts/gpu-train-peers.py "$mode" --batch "$BATCH" --seq "$SEQ" --authors .devt/authors 2>&1 \
    | grep -v "Replacing layer" | tail -3
done
