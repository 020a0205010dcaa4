#!/usr/bin/env bash
# Packs what scripts/gpu-accuracy.sh needs on a GPU machine into two
# folders git ignores, one device call each (64 MiB a call, so SmolLM2's
# GGUF travels xz-compressed in two parts; the machine keeps the first while
# it stays warm between the calls):
#   .devq1/  fairyc, synth_gguf (synthetic models for probes beside the
#            runs), the model's checksum and its first part;
#   .devq2/  the model's second part, the corpus and the cuda conformance
#            tests (the corpus there: beside .devq1 and the tree it would
#            pass 64 MiB);
#   .devq3/  with TEACHER_CACHE=FILE, a teacher's token file that an earlier
#            machine generated (gpu-accuracy.sh returns them in runs.tar.xz),
#            xz-compressed, in a call of its own (beside .devq2 and the tree
#            it leaves no room): gpu-accuracy.sh reads it instead of
#            generating (with the TEACHER and TEACHER_BATCH it was made
#            with).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
FIRST=${FIRST:-44000000}
cargo build --release --locked
cargo build --release --locked -p fairyc-frontend --example synth_gguf
cuda=$(cargo test --release --locked -p fairyc-backends --test cuda --no-run 2>&1 |
  sed -n 's/.*Executable .*(\(.*\))$/\1/p' | head -1)
rm -rf .devq1 .devq2 .devq3 && mkdir -p .devq1 .devq2
pack() { strip -o "$1/$2" "$3" && xz -6 -T0 "$1/$2"; }
pack .devq1 fairyc target/release/fairyc
pack .devq1 synth_gguf target/release/examples/synth_gguf
pack .devq2 cuda-test "$cuda"
cp ../shared/corpus/public.txt .devq2/corpus.txt
sha256sum < "$MODEL" | cut -d' ' -f1 > .devq1/smol.gguf.sha256
xz -9 -T0 -c "$MODEL" > .devq1/smol.gguf.xz.whole
head -c "$FIRST" .devq1/smol.gguf.xz.whole > .devq1/smol.gguf.xz.part0
tail -c +$((FIRST + 1)) .devq1/smol.gguf.xz.whole > .devq2/smol.gguf.xz.part1
rm .devq1/smol.gguf.xz.whole
if [ -n "${TEACHER_CACHE:-}" ]; then
  mkdir -p .devq3 && xz -9 -T0 -c "$TEACHER_CACHE" > ".devq3/$(basename "$TEACHER_CACHE").xz"
fi
du -cb .devq1 .devq2 .devq3 2>/dev/null
