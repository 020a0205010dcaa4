#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server (fairyc serve, llama.cpp's
server): N concurrent clients each stream one greedy chat completion of
--tokens tokens; prints throughput (completion tokens per second summed over
clients) and latency (time to first token, time per later token) as a
Markdown table row per N. Standard library only.

  scripts/bench-serve.py http://127.0.0.1:8080 --clients 1 4 16 --tokens 32
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
]


def stream_one(base, prompt, tokens, out):
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, (response.status, response.read())
    first = last = None
    usage = None
    pieces = 0
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            pieces += 1
    conn.close()
    # Servers that send no usage when streaming (llama-cpp-python's): one
    # streamed piece per token.
    n = usage["completion_tokens"] if usage else pieces
    out.append({"ttft": first - start, "per_token": (last - first) / max(n - 1, 1), "tokens": n})


def run(base, clients, tokens):
    out = []
    threads = [
        threading.Thread(target=stream_one, args=(base, PROMPTS[i % len(PROMPTS)], tokens, out))
        for i in range(clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert len(out) == clients, "a client failed"
    total = sum(r["tokens"] for r in out)
    return {
        "clients": clients,
        "tokens": total,
        "wall_s": wall,
        "throughput": total / wall,
        "ttft_ms": statistics.median(r["ttft"] for r in out) * 1e3,
        "per_token_ms": statistics.median(r["per_token"] for r in out) * 1e3,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--label", default="server")
    args = parser.parse_args()
    print("| server | clients | tokens | wall (s) | tokens/s (sum) | time to first token (median, ms) | per token (median, ms) |")
    print("|---|---|---|---|---|---|---|")
    for clients in args.clients:
        r = run(args.base, clients, args.tokens)
        print(
            f"| {args.label} | {clients} | {r['tokens']} | {r['wall_s']:.1f} | {r['throughput']:.1f} "
            f"| {r['ttft_ms']:.0f} | {r['per_token_ms']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
