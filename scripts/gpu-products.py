"""PyTorch's bf16 products at the shapes of the QAT step (docs/BENCHMARKS.md),
timed by CUDA events over 50 calls: the peer of
`cargo run --release -p fairyc-backends --example cuda_products`."""
import torch
rows = 16384
for k, n in [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]:
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        y = x @ w.t()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(50):
        y = x @ w.t()
    e.record(); torch.cuda.synchronize()
    us = s.elapsed_time(e) * 1e3 / 50
    print(f"torch bf16 {rows} x {k} -> {n}: {us:.1f} us, {2*rows*k*n/us/1e6:.0f} TFLOP/s")
