"""λ̂ under bf16 autocast against float32, on problems whose λ is known and on the demo transformer.

    python benchmarks/precision.py              # ~2 min on one CPU thread
    python benchmarks/precision.py --demo-checkpoint checkpoints/demo/run/step_5000.pt

SGLDConfig(dtype="bfloat16") runs every forward and backward pass under torch.autocast(bf16) while the chains,
their update and L_n(w*)'s sum stay float32. Each problem is estimated twice with the same seed (the same
minibatches and noise), float32 and bf16, so the difference is the precision's, not the sampler's; it is printed in
units of the float32 estimate's s.e. (across chains). bf16 keeps 8 bits of mantissa: a loss of size L is resolved
to about L/256 per evaluation, and nβ multiplies what survives of that into λ̂.

  regression   y = W x, W 4 × 3, noiseless, MSE: λ = 6 (matmuls: autocast casts them)
  dln          dln_problem((8, 6, 4, 8)): λ = 24 by Aoyagi's formula, at its own settings
  crossing     the normal crossing x·w₂², λ = 1/4: elementwise products only, which autocast leaves in float32
  demo         the demo's attention-only transformer at a trained checkpoint, at the demo's settings (optional)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from slt_probe import SGLDConfig, estimate_llc
from slt_probe.engine.dln import dln_problem, mse


class Point(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())


def regression(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, W = torch.randn(n, 3, generator=g), torch.randn(4, 3, generator=g)
    y = x @ W.T

    def loss(m, batch):
        xb, yb = batch
        return (xb @ m.w.view(4, 3).T - yb).square().mean()

    return "regression 4x3", 6.0, Point(W.reshape(-1)), (x, y), loss, SGLDConfig(
        lr=1e-4, localization=1.0, nbeta=1000.0, chains=16, draws=1000, burnin=200, batch_size=256)


def crossing(n=4096, seed=0):
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))

    def loss(m, batch):
        (xb,) = batch
        return (xb[:, 0] * m.w[1] ** 2).square().mean()

    return "crossing x w2^2", 0.25, Point(torch.zeros(2)), (x,), loss, SGLDConfig(
        lr=2.5e-3, localization=0.01, nbeta=10.0, chains=64, draws=1000, burnin=200, batch_size=256)


def dln():
    p = dln_problem((8, 6, 4, 8))
    return "DLN [8,6,4,8]", p.llc, p.model, p.data, mse, p.config


def demo(path: Path):
    from slt_probe.demo.model import attn_only
    from slt_probe.demo.pipeline import DemoConfig
    import numpy as np
    run = path.parent
    model = attn_only(**json.loads((run / "model.json").read_text()))
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state.get("model", state))
    data = torch.from_numpy(np.load(run / "data.npy"))
    return f"demo {path.name}", float("nan"), model, data, None, DemoConfig().sgld


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo-checkpoint", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problems = [regression(), dln(), crossing()] + ([demo(args.demo_checkpoint)] if args.demo_checkpoint else [])
    print("| problem | λ | float32 λ̂ ± s.e. | bf16 λ̂ ± s.e. | bf16 − float32 (s.e.) | bias vs λ f32 / bf16 | s f32 / bf16 |")
    print("|---|---|---|---|---|---|---|")
    for name, lam, model, data, loss_fn, cfg in problems:
        out, secs = {}, {}
        for dtype in ("float32", "bfloat16"):
            start = time.perf_counter()
            out[dtype] = estimate_llc(model, data, loss_fn=loss_fn, config=replace(cfg, dtype=dtype, device="cpu"))
            secs[dtype] = time.perf_counter() - start
        a, b = out["float32"], out["bfloat16"]
        z = (b.llc_mean - a.llc_mean) / a.llc_se
        bias = "–" if math.isnan(lam) else f"{(a.llc_mean - lam) / lam:+.1%} / {(b.llc_mean - lam) / lam:+.1%}"
        print(f"| {name} | {lam:.4g} | {a.llc_mean:.4g} ± {a.llc_se:.2g} | {b.llc_mean:.4g} ± {b.llc_se:.2g} | "
              f"{z:+.2f} | {bias} | {secs['float32']:.1f} / {secs['bfloat16']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
