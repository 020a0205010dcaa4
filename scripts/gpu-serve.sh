#!/usr/bin/env bash
# fairyc serve on the GPU under concurrent clients, from .devr/
# (scripts/gpu-pack.sh): the W1 SmolLM2 artifact served by the cuda backend
# with 16 slots, then scripts/bench-serve.py with 1, 4 and 16 clients, and
# /health's largest batch.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
for f in .devr/*.xz; do xz -d -c "$f" > ".dev/$(basename "$f" .xz)"; done
chmod +x .dev/fairyc
.dev/fairyc serve .dev/w1.fairy --backend cuda --parallel 16 --ctx 512 --port 8090 > .dev/serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  curl -sf http://127.0.0.1:8090/health > /dev/null && break
  sleep 1
done
head -1 .dev/serve.log
python3 scripts/bench-serve.py http://127.0.0.1:8090 --clients 1 4 16 --tokens 32
curl -s http://127.0.0.1:8090/health; echo
