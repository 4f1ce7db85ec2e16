"""What method="auto" should pick on the CPU: ms per SGLD gradient step, vmap against loop, one torch thread.

    python benchmarks/auto_method.py

Deep linear networks (tiny activations), the demo's attention-only transformer (activations dominate) and bench_llc's
GPT-style transformer with F.scaled_dot_product_attention, biases and LayerNorm (SDPA has no vmap batching rule on
the CPU: under vmap it runs per sample, with a "performance drop" warning), at 2, 4 and 16 chains.
sampler.auto_method, the rule "auto" follows, was read off this table: the rule must not depend on timing at run
time, or the same command could pick another path, hence other numbers, on a busier machine.
"""

import time
import warnings

import torch
from bench_llc import gpt_sdpa  # benchmarks/ is on sys.path when a script there runs

from slt_probe.demo.model import attn_only
from slt_probe.engine.data import lm_cross_entropy
from slt_probe.engine.dln import deep_linear_network, mse
from slt_probe.engine.sampler import FlatModel, _GradientPaths, auto_method


def ms_per_step(model, loss_fn, batch, chains: int, repeats: int) -> dict[str, float]:
    flat = FlatModel(model, loss_fn)
    w = flat.w0.expand(chains, -1).clone()  # [C, D]
    paths = _GradientPaths(flat, w, torch.empty_like(w))
    out = {}
    for name in ("vmap", "loop"):
        step = getattr(paths, name)
        step(batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            step(batch)
        out[name] = (time.perf_counter() - t0) / repeats * 1e3
    return out


def main() -> None:
    torch.set_num_threads(1)
    cases = []
    for widths in ([8, 6, 4, 8], [32, 32, 32, 32], [64, 64, 64, 64], [128, 128, 128, 128], [256, 256, 256]):
        batch = (torch.randn(100, widths[0]), torch.randn(100, widths[-1]))
        cases.append((f"DLN {widths}", deep_linear_network(widths), mse, batch, 6))
    for kw in (dict(vocab_size=32, n_ctx=8, d_model=16, n_heads=2), dict(vocab_size=256, n_ctx=16, d_model=16, n_heads=2),
               dict(vocab_size=256, n_ctx=32, d_model=32, n_heads=2), dict(vocab_size=256, n_ctx=32, d_model=64, n_heads=4),
               dict(vocab_size=512, n_ctx=64, d_model=128, n_heads=4)):
        batch = torch.randint(0, kw["vocab_size"], (32, kw["n_ctx"] + 1))
        cases.append((f"attn_only d{kw['d_model']} T{kw['n_ctx']}", attn_only(**kw).eval(), lm_cross_entropy, batch, 3))
    for kw in (dict(vocab_size=64, n_ctx=16, d_model=16, n_heads=2, n_layers=2),
               dict(vocab_size=256, n_ctx=32, d_model=32, n_heads=2, n_layers=2),
               dict(vocab_size=256, n_ctx=32, d_model=64, n_heads=4, n_layers=2)):
        batch = torch.randint(0, kw["vocab_size"], (32, kw["n_ctx"] + 1))
        cases.append((f"gpt_sdpa d{kw['d_model']} T{kw['n_ctx']}", gpt_sdpa(**kw).eval(), lm_cross_entropy, batch, 3))
    warnings.filterwarnings("ignore", message="There is a performance drop")  # vmap over SDPA, every step
    print(f"{'model':28s} {'D':>8s} {'C':>3s} {'vmap ms':>9s} {'loop ms':>9s} {'loop/vmap':>9s}  faster  auto")
    hits = 0
    for name, model, loss_fn, batch, repeats in cases:
        for p in model.parameters():
            p.requires_grad_(False)
        D = sum(p.numel() for p in model.parameters())
        for chains in (2, 4, 16):
            r = ms_per_step(model, loss_fn, batch, chains, repeats)
            faster = "vmap" if r["vmap"] < r["loop"] else "loop"
            auto = auto_method(D, chains, torch.device("cpu"))
            hits += faster == auto
            print(f"{name:28s} {D:8d} {chains:3d} {r['vmap']:9.2f} {r['loop']:9.2f} {r['loop'] / r['vmap']:9.2f}  "
                  f"{faster:6s}  {auto}")
    print(f"auto picks the faster path in {hits} of {3 * len(cases)} cases")


if __name__ == "__main__":
    main()
