#!/usr/bin/env bash
# fairyc serve against llama-cpp-python's server, one after the other on this
# machine: `scripts/bench-serve.py` with 1, 4 and 16 concurrent clients each.
# Needs models/smollm2-w2.fairy, a release build, and the Q4_0 GGUF that
# scripts/bench-cpu.py writes (default /tmp/smollm2-Q4_0.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
Q4_0=${1:-/tmp/smollm2-Q4_0.gguf}
./target/release/fairyc serve models/smollm2-w2.fairy --port 8090 --parallel 16 --ctx 512 --backend llvm \
  > /tmp/fairyc-serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 5
echo "## fairyc W2 llvm --parallel 16"
python3 scripts/bench-serve.py http://127.0.0.1:8090 --clients 1 4 16 --tokens 32
curl -s http://127.0.0.1:8090/health; echo
kill $server; sleep 1
python3 -m llama_cpp.server --model "$Q4_0" --port 8091 --n_ctx 2048 --n_threads 2 --n_threads_batch 2 \
  --interrupt_requests False > /tmp/llama-cpp-server.log 2>&1 &
server=$!
sleep 8
echo "## llama-cpp-python server, Q4_0"
python3 scripts/bench-serve.py http://127.0.0.1:8091 --clients 1 4 16 --tokens 32
