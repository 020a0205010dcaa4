"""Training throughput of PyTorch peers on a SmolLM2-shaped model, for
docs/BENCHMARKS.md beside `fairyc train --device cuda` (scripts/gpu-train-bench.sh).

Modes (one per process, so that each measures its own peak memory):
  plain     plain bf16 training (weights in bf16, as the Fairy2i authors'
            train.py loads them), eager;
  compiled  the same under torch.compile;
  authors   the Fairy2i authors' W2 QAT: their QATLinearComplexPhaseV2
            (model_module/qat_modules.py of github.com/PKULab1806/Fairy2i-W2,
            run unchanged from --authors DIR) swapped in for every linear
            layer of the blocks, eager.
Each step: a batch of random token windows, the mean cross-entropy, backward,
gradient clipping at 2.0, AdamW (betas 0.9, 0.95). Prints tokens/s over the
timed steps and the peak memory PyTorch allocated.
"""
import argparse
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["plain", "compiled", "authors"])
p.add_argument("--vocab", type=int, default=49152)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--seq", type=int, default=1024)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--authors", default=None, help="the authors' model_module folder")
a = p.parse_args()

config = LlamaConfig(
    vocab_size=a.vocab,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=max(2048, a.seq),
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
torch.manual_seed(0)
model = LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)
if a.mode == "authors":
    sys.path.insert(0, a.authors)
    from qat_modules import replace_modules_for_qat  # noqa: E402

    # fairyc keeps the output layer in full precision: so does this run.
    replace_modules_for_qat(model, "complex_phase_v2", skip_lm_head=True)
model.train()
step_fn = model
if a.mode == "compiled":
    step_fn = torch.compile(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
params = sum(p.numel() for p in model.parameters())


def step():
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda")
    # transformers shifts the labels itself: they are the window's own ids.
    loss = step_fn(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


for _ in range(a.warmup):
    step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
for _ in range(a.steps):
    loss = step()
torch.cuda.synchronize()
elapsed = time.perf_counter() - start
tokens = a.steps * a.batch * a.seq
print(
    f"{a.mode}: {params / 1e6:.1f} M parameters, batch {a.batch} x {a.seq}, "
    f"{a.steps} steps in {elapsed:.2f} s: {tokens / elapsed:,.0f} tokens/s, "
    f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, loss {loss.item():.3f}"
)
