#!/usr/bin/env python3
"""Whole-model CPU speed, side by side in one run: llama.cpp (through the
llama-cpp-python package, built natively on this machine at install) on
SmolLM2 requantized to Q4_0, Q8_0 and its 2-bit type Q2_0 (blocks of 32:
the only llama.cpp type under 4 bits that covers SmolLM2's 576-wide rows;
the K-quants and TQ types need rows of 256, Q1_0 rows of 128), against
fairyc on the W2 (and optionally W1) artifact: its CPU backends with 7- and 14-bit activations
and the reference backend.

For each engine and thread count: prompt processing of the same prompt (about
128 tokens of ../shared/corpus) and 64 greedy decode steps, tokens/s, the
median of --runs runs; then the roofline: the weight bytes each engine
streams per decoded token, and the tokens/s that one core's memory
bandwidth (a 1 GiB copy, measured in the same run) allows. Prints Markdown.

  python3 scripts/bench-cpu.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --fairy models/smollm2-w2.fairy --fairyc target/release/fairyc

A LLaMA-7B-shaped stack (table c: a few blocks of the real widths, random
weights; llama.cpp's TQ2_0 and TQ1_0 apply to its rows of 4096 and 11008):

  cargo run --release -p fairyc-frontend --example synth_gguf -- \\
      /tmp/llama7b.gguf 4096 11008 2 32 128
  fairyc compile /tmp/llama7b.gguf --quant w2 -o /tmp/llama7b-w2.fairy
  python3 scripts/bench-cpu.py --gguf /tmp/llama7b.gguf --prompt-words 24 \\
      --fairy /tmp/llama7b-w2.fairy --types Q4_0 TQ2_0 TQ1_0 --backends llvm
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


def prompt_text(corpus, words):
    # 92 words are about 128 tokens of SmolLM2's tokenizer; the engines
    # report the exact count.
    text = open(corpus, encoding="utf-8").read().split()
    return " ".join(text[200 : 200 + words])


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
        n_ctx=2048,
        n_batch=2048,
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


def fairyc_rates(fairyc, model, args, prompt, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    run = subprocess.run(
        [fairyc, "run", model, "-p", prompt, "-n", str(DECODE + 1), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    m = LINE.search(run.stderr)
    if run.returncode != 0 or not m:
        sys.exit(f"fairyc run {' '.join(args)} failed:\n{run.stderr}")
    return int(m.group(1)), float(m.group(2)), float(m.group(4))


def copy_bandwidth():
    """Bytes per second one core moves (read plus write) in a 1 GiB copy."""
    a = np.ones(1 << 30, dtype=np.uint8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - start))
    return best


def gguf_streamed(path):
    """Weight bytes a decode step reads: SmolLM2's output layer is its token
    embeddings (tied), so every tensor; the file less its metadata (the
    vocabulary, about a megabyte) is close enough."""
    return os.path.getsize(path)


SUMMARY = re.compile(r"^\s+(\w+):\s+\d+ tensors,\s+([\d,]+) parameters", re.M)
# What one parameter of each stored type occupies; `q8` is absent on purpose:
# an artifact stores only its token embeddings so, and a decode step reads one
# row of them.
BYTES_PER_PARAMETER = {"code2": 0.25, "f32": 4.0, "f16": 2.0, "bf16": 2.0}


def fairy_streamed(fairyc, model):
    """Weight bytes a decode step reads: the codes and the float weights
    (`fairyc dump --summary`)."""
    out = subprocess.run([fairyc, "dump", model, "--summary"], capture_output=True, text=True, check=True).stdout
    return sum(BYTES_PER_PARAMETER.get(k, 0) * int(n.replace(",", "")) for k, n in SUMMARY.findall(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--fairy", required=True)
    ap.add_argument("--fairyc", default="target/release/fairyc")
    ap.add_argument("--corpus", default="../shared/corpus/public.txt")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt-words", type=int, default=92)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fairy-w1", help="a W1 artifact to time too")
    ap.add_argument(
        "--types",
        nargs="+",
        default=["Q4_0", "Q8_0", "Q2_0"],
        help="llama.cpp types to requantize the GGUF to (LLAMA_FTYPE_MOSTLY_<TYPE>)",
    )
    ap.add_argument("--backends", nargs="+", default=["llvm", "cranelift", "reference"])
    args = ap.parse_args()
    prompt = prompt_text(args.corpus, args.prompt_words)
    tmp = tempfile.mkdtemp(prefix="fairyc-bench-")
    ggufs = []
    for name in args.types:
        ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
        out = os.path.join(tmp, f"model-{name}.gguf")
        requantize(args.gguf, ftype, out)
        ggufs.append((f"llama.cpp {name}", out, os.path.getsize(out), gguf_streamed(out)))
    engines = [
        (label, lambda t, p=path: llama_rates(p, prompt, t), size, streamed)
        for label, path, size, streamed in ggufs
    ]
    artifacts = [("W2", args.fairy)] + ([("W1", args.fairy_w1)] if args.fairy_w1 else [])
    for quant, model in artifacts:
        variants = [(b, ["--backend", b]) for b in args.backends]
        if "llvm" in args.backends:
            variants.insert(1, ("llvm 14-bit", ["--backend", "llvm", "--activation-bits", "14"]))
        if quant != "W2":
            variants = variants[:1]
        for name, flags in variants:
            engines.append(
                (
                    f"fairyc {quant} {name}",
                    lambda t, m=model, f=flags: fairyc_rates(args.fairyc, m, f, prompt, t),
                    os.path.getsize(model),
                    fairy_streamed(args.fairyc, model),
                )
            )
    bandwidth = copy_bandwidth()
    print(f"llama-cpp-python {llama_cpp.__version__}; {DECODE} decode steps; median of {args.runs} runs, engines in turn")
    print(f"one core copies {bandwidth / 1e9:.1f} GB/s (read + write, 1 GiB)")
    print("| engine | file MB | streamed MB/token | bound tokens/s | threads | prompt tokens | prompt tokens/s | decode tokens/s | of bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        results = {label: [] for label, _, _, _ in engines}
        for _ in range(args.runs):
            for label, rates, _, _ in engines:
                results[label].append(rates(threads))
        for label, _, size, streamed in engines:
            runs = results[label]
            n = runs[0][0]
            p = statistics.median(r[1] for r in runs)
            d = statistics.median(r[2] for r in runs)
            bound = bandwidth / streamed
            print(
                f"| {label} | {size / 1e6:.1f} | {streamed / 1e6:.1f} | {bound:.0f} | {threads} | {n} | {p:.1f} | {d:.1f} | {d / bound:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
