#!/usr/bin/env python3
"""The PyTorch peers of issue 18's GPU tables, on the same GPU in one run:
the bandwidth of a device-to-device copy, cuBLAS's bf16 GEMV at SmolLM2's and
LLaMA-7B's layer shapes (CUDA events, median of 50; `--no-gemv` skips them),
and a model in bf16 (random weights, the blocks and vocabulary of the
synthetic model fairyc is timed on): batch-1 decode as a plain loop with a
static KV cache (attention through `scaled_dot_product_attention`, grouped
query heads as the model has them), eager and captured as a CUDA graph, and
the prompt's processing (one forward pass over `--prompt` tokens, eager).

  python3 scripts/gpu-peer.py [--shape llama7b|smollm2] [--layers 2] [--vocab 275]
"""
import argparse
import statistics

import torch


def timed(fn, reps=50):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / timed(lambda: b.copy_(a), 20)


def rope(x, pos, theta=10000.0):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.float()[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(x.dtype), torch.cat([ang.sin()] * 2, -1).to(x.dtype)
    # One angle per position, over the heads: x is [positions, heads, d].
    cos, sin = cos[:, None, :], sin[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Stack:
    def __init__(self, layers, hidden, ffn, heads, kv_heads, vocab, max_len):
        g = lambda *s: (torch.randn(*s, device="cuda", dtype=torch.bfloat16) * 0.02)
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hidden // heads
        kv = kv_heads * self.hd
        self.embed, self.out = g(vocab, hidden), g(vocab, hidden)
        self.blocks = [
            dict(q=g(hidden, hidden), k=g(kv, hidden), v=g(kv, hidden), o=g(hidden, hidden),
                 gate=g(ffn, hidden), up=g(ffn, hidden), down=g(hidden, ffn),
                 kc=torch.zeros(max_len, kv_heads, self.hd, device="cuda", dtype=torch.bfloat16),
                 vc=torch.zeros(max_len, kv_heads, self.hd, device="cuda", dtype=torch.bfloat16))
            for _ in range(layers)
        ]
        self.mask = torch.arange(max_len, device="cuda")
        self.weight_bytes = sum(2 * w.numel() for b in self.blocks for k, w in b.items() if k not in ("kc", "vc")) + 2 * self.out.numel()

    def forward(self, tokens, pos):
        """Logits' argmax after each of `tokens` at positions `pos` (int64 tensors of shape [S]
        on the device, static for graphs), the keys and values written into the caches."""
        norm = lambda x: x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype)
        s = tokens.shape[0]
        x = self.embed[tokens]
        # Query row i sees the cache's positions up to pos[i].
        mask = (self.mask[None, :] <= pos[:, None])[None, None]
        for b in self.blocks:
            h = norm(x)
            q = (h @ b["q"].T).view(s, self.heads, self.hd)
            k = (h @ b["k"].T).view(s, self.kv_heads, self.hd)
            v = (h @ b["v"].T).view(s, self.kv_heads, self.hd)
            q, k = rope(q, pos), rope(k, pos)
            b["kc"].index_copy_(0, pos, k)
            b["vc"].index_copy_(0, pos, v)
            att = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(0, 1)[None], b["kc"].permute(1, 0, 2)[None], b["vc"].permute(1, 0, 2)[None],
                attn_mask=mask, enable_gqa=True)
            x = x + att[0].transpose(0, 1).reshape(s, -1) @ b["o"].T
            h = norm(x)
            x = x + (torch.nn.functional.silu(h @ b["gate"].T) * (h @ b["up"].T)) @ b["down"].T
        return (norm(x) @ self.out.T).argmax(-1)


SHAPES = {
    # hidden, ffn, heads, kv heads
    "llama7b": (4096, 11008, 32, 32),
    "smollm2": (576, 1536, 9, 3),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama7b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=275)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--no-gemv", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    bw = copy_bandwidth()
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write, 1 GiB)")
    if not args.no_gemv:
        print("| shape (in->out) | bf16 GEMV us | GB/s | of copy |")
        print("|---|---|---|---|")
        for k, n in [(576, 192), (576, 576), (576, 1536), (1536, 576), (576, 49152), (4096, 4096), (4096, 11008), (11008, 4096)]:
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            x = torch.randn(k, 1, device="cuda", dtype=torch.bfloat16)
            t = timed(lambda: w @ x)
            print(f"| {k}->{n} | {t * 1e6:.1f} | {2 * n * k / t / 1e9:.0f} | {2 * n * k / t / bw:.0%} |")
    hidden, ffn, heads, kv_heads = SHAPES[args.shape]
    stack = Stack(args.layers, hidden, ffn, heads, kv_heads, args.vocab,
                  max_len=max(args.steps, args.prompt) + 8)
    token = torch.zeros(1, dtype=torch.long, device="cuda")
    pos = torch.zeros(1, dtype=torch.long, device="cuda")
    with torch.no_grad():
        prompt = torch.randint(0, args.vocab, (args.prompt,), device="cuda")
        positions = torch.arange(args.prompt, device="cuda")
        prefill = timed(lambda: stack.forward(prompt, positions), 10)
        for p in range(4):
            pos.fill_(p)
            token.copy_(stack.forward(token, pos))
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for p in range(args.steps):
            pos.fill_(p)
            token.copy_(stack.forward(token, pos))
        end.record()
        end.synchronize()
        eager = args.steps / (start.elapsed_time(end) / 1e3)
        graph = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                out = stack.forward(token, pos)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(graph):
            out = stack.forward(token, pos)
        start.record()
        for p in range(args.steps):
            pos.fill_(p)
            graph.replay()
            token.copy_(out)
        end.record()
        end.synchronize()
        graphed = args.steps / (start.elapsed_time(end) / 1e3)
    mb = stack.weight_bytes / 1e6
    print(f"bf16 {args.layers}-block {args.shape}-shaped model, vocab {args.vocab}: {mb:.0f} MB of weights a token; "
          f"weight-streaming limit {bw / 2 / stack.weight_bytes:.0f} tokens/s (copy bandwidth / 2 per byte read)")
    print(f"decode tokens/s: eager {eager:.1f}, CUDA graph {graphed:.1f}; "
          f"a {args.prompt}-token prompt in one forward pass (eager): {args.prompt / prefill:.0f} tokens/s")


if __name__ == "__main__":
    main()
