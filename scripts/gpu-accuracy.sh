#!/usr/bin/env bash
# QAT accuracy of SmolLM2-135M on a GPU machine (docs/RESULTS.md, issue 17),
# from the folders .devq*/ that scripts/gpu-pack-accuracy.sh fills: the
# model in parts, each carried by its own call while the machine stays warm
# (one call carries 64 MiB), fairyc and the corpus. Whatever they hold is
# kept in WORK (.dev/acc), where the parts are joined once all have come.
# The corpus (../shared/corpus/public.txt, packed as corpus.txt) is cut by
# lines: the last HELDOUT_LINES articles are only evaluated (--eval-data),
# never trained on; the rest is the training text.
#
#   bash scripts/gpu-accuracy.sh RUN...
#
# Each RUN trains for LIMIT seconds (--time-limit) or up to step STOP
# (default STEPS), whichever comes first, on the schedule of a STEPS-step run:
# warm-up, then a cosine decay to MIN_LR times LR over the last DECAY percent
# (0.1 and 30 by default). DECAY_START and DECAY_STEPS set the decay in steps
# instead, as the ten-minute runs' warm-up-stable-decay schedule does
# (STEPS=5675 DECAY_START=4675 DECAY_STEPS=1000). So a run stopped at step
# STOP has had the same learning rates as a longer one up to there; it
# resumes where an earlier call stopped. SCALES sets --scales (tensor by
# default, the paper's). It evaluates the held-out text
# every EVAL_EVERY steps and checkpoints every CKPT_EVERY (100 each; a long
# run saves time with fewer, as each checkpoint writes the masters and
# moments). Its log, loss CSV and curve go to $OUT/runs.tar.xz. RUN is
#   fp                      the unquantized model, evaluated only;
#   Q-ce, Q-text            Q (w1, w2, w3, ternary, binary) trained on the text
#                           with the next-token loss, or distilled (KL to the
#                           unquantized model) on it;
#   Q-free, Q-mix           distilled on TEACHER sequences the teacher
#                           generates (data-free), alone or beside the text;
#                           with TEACHER_LIMIT, generation stops after that
#                           many seconds and the next call goes on with it.
# With PPL=1 each artifact is then scored by `fairyc ppl` on the held-out text.
set -uo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
W=${WORK:-.dev/acc} OUT=${OUT:-/tmp}
for run in "$@"; do
  case $run in
    fp | w[123]-ce | w[123]-text | w[123]-free | w[123]-mix) ;;
    binary-ce | binary-text | binary-free | binary-mix) ;;
    ternary-ce | ternary-text | ternary-free | ternary-mix) ;;
    *) echo "unknown run $run (fp, or Q-ce, Q-text, Q-free, Q-mix)"; exit 2 ;;
  esac
done
mkdir -p "$W" "$OUT/runs"
# Each file unpacked once; a copy cut short (a call killed midway) is never
# taken for a whole one. A teacher's cache (teacher-*.tok, from an earlier
# machine's runs.tar.xz) is read as generated here.
for f in ${PACK:-.devq*}/*; do
  name=$(basename "$f" .xz)
  [ -e "$W/$name" ] && continue
  case $f in *.xz) xz -d -c "$f" > "$W/$name.tmp" ;; *) cp "$f" "$W/$name.tmp" ;; esac &&
    mv "$W/$name.tmp" "$W/$name"
done
for exe in fairyc cuda-test synth_gguf; do [ -e "$W/$exe" ] && chmod +x "$W/$exe"; done
if [ ! -e "$W/smol.gguf" ]; then
  cat "$W"/smol.gguf.xz.part* | xz -d > "$W/smol.gguf.joining" 2>/dev/null
  if [ "$(sha256sum < "$W/smol.gguf.joining" | cut -d' ' -f1)" = "$(cat "$W/smol.gguf.sha256")" ]; then
    mv "$W/smol.gguf.joining" "$W/smol.gguf"
  else
    echo "the model's parts are not all here yet: $(ls "$W"/smol.gguf.xz.part* | wc -l) of them"
    exit 3
  fi
fi
HELDOUT_LINES=${HELDOUT_LINES:-30}
# Lines, the last one counted without its newline.
total=$(awk 'END { print NR }' "$W/corpus.txt")
head -n $((total - HELDOUT_LINES)) "$W/corpus.txt" > "$W/train.txt"
tail -n "$HELDOUT_LINES" "$W/corpus.txt" > "$W/heldout.txt"
SEQ=${SEQ:-512} BATCH=${BATCH:-16} STEPS=${STEPS:-1000} LIMIT=${LIMIT:-120} LR=${LR:-1e-4}
TEACHER=${TEACHER:-512} TEACHER_BATCH=${TEACHER_BATCH:-64} DEVICE=${DEVICE:-cuda}
EVAL_EVERY=${EVAL_EVERY:-100} CKPT_EVERY=${CKPT_EVERY:-100} DECAY=${DECAY:-30} MIN_LR=${MIN_LR:-0.1}
SCALES=${SCALES:-tensor}
DECAY_START=${DECAY_START:-} DECAY_STEPS=${DECAY_STEPS:-}
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for run in "$@"; do
  quant=${run%%-*} objective=${run#*-}
  # A run resumes only a checkpoint of its own settings.
  tag=$run-seq$SEQ-batch$BATCH-steps$STEPS-lr$LR
  [ "$DECAY-$MIN_LR" != 30-0.1 ] && tag+=-decay$DECAY-min$MIN_LR
  [ -n "$DECAY_START$DECAY_STEPS" ] && tag+=-wsd$DECAY_START+$DECAY_STEPS
  decay_start=${DECAY_START:-$((STEPS * (100 - DECAY) / 100))}
  decay_steps=${DECAY_STEPS:-$((STEPS * DECAY / 100))}
  [ "$SCALES" != tensor ] && tag+=-scales$SCALES
  flags=(--device "$DEVICE" --seq "$SEQ" --grad-accum "$BATCH" --eval-data "$W/heldout.txt"
    --eval-windows 1000 -o "$W/$tag.fairy")
  teacher=(--distill --teacher-sequences "$TEACHER" --teacher-batch "$TEACHER_BATCH"
    --teacher-cache "$W/teacher-seq$SEQ-n$TEACHER-batch$TEACHER_BATCH.tok")
  # Generation over several calls: each stops after TEACHER_LIMIT seconds.
  [ -n "${TEACHER_LIMIT:-}" ] && teacher+=(--teacher-time-limit "$TEACHER_LIMIT")
  case $run in
    fp) flags+=(--quant none --steps 0 --data "$W/train.txt") ;;
    *)
      flags+=(--quant "$quant" --scales "$SCALES" --steps "${STOP:-$STEPS}" --time-limit "$LIMIT" --lr "$LR" --warmup 20
        --decay-start "$decay_start" --decay-steps "$decay_steps"
        --min-lr-ratio "$MIN_LR" --eval-every "$EVAL_EVERY"
        --checkpoint "$W/$tag.ckpt" --checkpoint-every "$CKPT_EVERY" --resume
        --loss-csv "$W/$tag.csv" --loss-png "$W/$tag.png")
      case $objective in
        ce) flags+=(--data "$W/train.txt") ;;
        text) flags+=(--distill --data "$W/train.txt") ;;
        free) flags+=("${teacher[@]}") ;;
        mix) flags+=("${teacher[@]}" --data "$W/train.txt") ;;
      esac ;;
  esac
  echo "== $run: fairyc train smol.gguf ${flags[*]}"
  start=$(date +%s)
  "$W/fairyc" train "$W/smol.gguf" "${flags[@]}" > "$W/$tag.log" 2>&1
  echo "exit $? after $(($(date +%s) - start)) s"
  grep -v "^\s*$" "$W/$tag.log" | grep -iv "step=" | tail -6
  [ -n "${PPL:-}" ] && [ -e "$W/$tag.fairy" ] &&
    "$W/fairyc" ppl "$W/$tag.fairy" --text "$W/heldout.txt" --ctx "$SEQ" --device "$DEVICE" 2>&1 | tail -2
  cp "$W/$tag".{log,csv,png} "$OUT/runs/" 2>/dev/null
done
# The teacher's sequences come back too (about 4 MB for 2,048 of 513 tokens,
# against minutes of GPU time to generate): carried back in a .devq folder,
# a later machine reads them instead of generating them again.
for cache in "$W"/teacher-*.tok; do
  cp "$cache" "$OUT/runs/"
done
tar -C "$OUT" -cJf "$OUT/runs.tar.xz" runs && rm -rf "$OUT/runs"
