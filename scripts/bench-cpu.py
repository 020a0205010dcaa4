#!/usr/bin/env python3
"""Whole-model CPU speed, side by side in one run: llama.cpp (through the
llama-cpp-python package, built natively on this machine at install) on
SmolLM2 requantized to Q4_0 and Q8_0, against fairyc on the W2 artifact (its
CPU backends and the reference backend). llama.cpp's 2-bit K-quants need rows
of 256: SmolLM2's 576-wide rows fall back to other types, so no 2-bit
llama.cpp row is possible on this model.

For each engine and thread count: prompt processing of the same prompt (about
128 tokens of ../shared/corpus) and 64 greedy decode steps, tokens/s, the
median of --runs runs. Prints a Markdown table.

  python3 scripts/bench-cpu.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --fairy models/smollm2-w2.fairy --fairyc target/release/fairyc
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import llama_cpp

DECODE = 64


def prompt_text(corpus, tokens=128):
    text = open(corpus, encoding="utf-8").read()
    words = text.split()
    # About 128 tokens of SmolLM2's tokenizer; the engines report the exact count.
    return " ".join(words[200 : 200 + int(tokens * 0.72)])


def requantize(src, ftype, out):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize({ftype}) failed: {rc}")


def llama_rates(path, prompt, threads):
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=512,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    ids = llm.tokenize(prompt.encode(), add_bos=False)
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prompt_s = time.perf_counter() - start
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(DECODE):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode_s = time.perf_counter() - start
    del llm
    return len(ids), len(ids) / prompt_s, DECODE / decode_s


LINE = re.compile(
    r"\[(\d+) prompt tokens in [\d.]+s \(([\d.]+) tokens/s\), \d+ generated, "
    r"(\d+) decode steps in [\d.]+s \(([\d.]+) tokens/s\)"
)


def fairyc_rates(fairyc, model, backend, prompt, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    run = subprocess.run(
        [fairyc, "run", model, "-p", prompt, "-n", str(DECODE + 1), "--backend", backend],
        capture_output=True,
        text=True,
        env=env,
    )
    m = LINE.search(run.stderr)
    if run.returncode != 0 or not m:
        sys.exit(f"fairyc run --backend {backend} failed:\n{run.stderr}")
    return int(m.group(1)), float(m.group(2)), float(m.group(4))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--fairy", required=True)
    ap.add_argument("--fairyc", default="target/release/fairyc")
    ap.add_argument("--corpus", default="../shared/corpus/public.txt")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=["llvm", "cranelift", "reference"])
    args = ap.parse_args()
    prompt = prompt_text(args.corpus)
    tmp = tempfile.mkdtemp(prefix="fairyc-bench-")
    ggufs = []
    for name, ftype in [
        ("Q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0),
        ("Q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
    ]:
        out = os.path.join(tmp, f"smollm2-{name}.gguf")
        requantize(args.gguf, ftype, out)
        ggufs.append((f"llama.cpp {name}", out, os.path.getsize(out)))
    engines = [(label, lambda t, p=path: llama_rates(p, prompt, t), size) for label, path, size in ggufs]
    for backend in args.backends:
        engines.append(
            (
                f"fairyc W2 {backend}",
                lambda t, b=backend: fairyc_rates(args.fairyc, args.fairy, b, prompt, t),
                os.path.getsize(args.fairy),
            )
        )
    print(f"llama-cpp-python {llama_cpp.__version__}; {DECODE} decode steps; median of {args.runs} runs, engines in turn")
    print("| engine | file MB | threads | prompt tokens | prompt tokens/s | decode tokens/s |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        results = {label: [] for label, _, _ in engines}
        for _ in range(args.runs):
            for label, rates, _ in engines:
                results[label].append(rates(threads))
        for label, _, size in engines:
            runs = results[label]
            n = runs[0][0]
            p = statistics.median(r[1] for r in runs)
            d = statistics.median(r[2] for r in runs)
            print(f"| {label} | {size / 1e6:.1f} | {threads} | {n} | {p:.1f} | {d:.1f} |", flush=True)


if __name__ == "__main__":
    main()
