"""Fingerprints for tests/quant_golden.rs from the authors' own code.

Runs `InferenceOptimizedComplexPhase` (V1-V4) of PKULab1806/Fairy2i-W2
(`model_module/qat_modules.py`, unchanged, not part of this repository) on
CUDA in bf16, on the matrices that `weights` in quant_golden.rs generates,
and prints FNV-1a 64 of each deployed weight's little-endian bytes.

    python3 authors_bf16.py /path/to/Fairy2i-W2/model_module

Needs PyTorch with a CUDA device and numpy.
"""
import json
import sys

import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
from qat_modules import InferenceOptimizedComplexPhase  # noqa: E402

SHAPES = [(1, 64, 96), (2, 576, 576), (3, 1536, 576), (4, 576, 1536), (5, 192, 576)]


def weights(seed, rows, cols):
    """SplitMix64 output i (1-based), three 10-bit fields summed minus 1534, over 16384."""
    i = np.arange(1, rows * cols + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    fields = [((z >> np.uint64(s)) & np.uint64(0x3FF)).astype(np.int64) for s in (0, 10, 20)]
    k = sum(fields) - 1534
    k[((z >> np.uint64(40)) & np.uint64(0xFF)) == 0] = 0
    a = torch.from_numpy((k.astype(np.float32) / 16384).reshape(rows, cols))
    return a.to(torch.bfloat16)


def fnv(t):
    h = 0xCBF29CE484222325
    for b in t.contiguous().view(torch.int16).numpy().astype("<i2").tobytes():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def deploy(a, version):
    rows, cols = a.shape
    layer = InferenceOptimizedComplexPhase(
        version=version, in_features=cols, out_features=rows, bias=False,
        device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.data.copy_(a.cuda())
    layer._ensure_quantized()
    return layer.weight.data.cpu()


print(torch.__version__, torch.cuda.get_device_name(0))
for seed, rows, cols in SHAPES:
    a = weights(seed, rows, cols)
    a_q = [fnv(deploy(a, v)) for v in ("v1", "v2", "v3", "v4")]
    print(json.dumps({"seed": seed, "rows": rows, "cols": cols, "a": fnv(a), "a_q": a_q}))
