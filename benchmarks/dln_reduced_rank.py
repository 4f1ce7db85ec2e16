"""λ̂ of deep linear networks at generic REDUCED-rank true parameters, beside Aoyagi's formula.

    python benchmarks/dln_reduced_rank.py                       # default configs, ~2 min on 1 CPU core
    python benchmarks/dln_reduced_rank.py --configs "8,8,8;8,4,8" --ranks 1,2 --layer all

Setting as tests/validation/test_dln.py (Furman & Lau 2024, arXiv 2402.03698): y = W_L ... W_1 x noiseless from the
true parameter, x uniform in [-10, 10]^H_0, MSE (mean over batch and output units), n = 1e5, nβ = n/log n,
ε = 5e-7, γ = 1, batch 500. Every layer is a Haar-random (semi-)orthogonal matrix, then ONE layer is
truncated to rank r by SVD (its top r singular directions kept), so the true product has rank r and the
other layers stay generic and full rank.

Reported, not asserted. dln_learning_coefficient(widths, r) is the GLOBAL coefficient: the minimum of
the local one over all true parameters, attained where every layer is as degenerate as it can be. Here
only one layer is, so the local coefficient may legitimately exceed the formula. Example: for
widths [8, 8, 8] the second layer is invertible, so near w* the map (A, B) -> BA is a submersion, the
true set is a smooth manifold of codimension 64 and the local coefficient is 64/2 = 32 for every r,
while the formula gives 26 at r = 1. The column rank(H)/2 (the Hessian rank at w*, = the rank of the
Jacobian of the product map) is a lower bound on the local coefficient, and equals it where the true set
is smooth near w* (it is at the default points: λ̂ tracks it within a few %); d/2 is an upper bound on
any coefficient. "rel diff" is (λ̂ - formula) / formula, "vs rk(H)/2" is (λ̂ - rk(H)/2) / (rk(H)/2).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import torch

from slt_probe.engine.estimate import estimate_llc
from slt_probe.engine.dln import mse
from slt_probe.engine.sampler import SGLDConfig
from slt_probe.engine.closed_forms import dln_learning_coefficient, dln_parameter_count

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = "8,8,8;5,12,10;8,4,8;10,8,12,6;6,9,7,10,8"


def load_dln_module():
    """Import models/dln.py from its path; the repo root is not a package."""
    name = "_slt_probe_bench_models_dln"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "models" / "dln.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def weights64(model) -> list[torch.Tensor]:
    return [layer.weight.detach().double() for layer in model.layers]


# The truncated layer is exactly rank r in float64 but not after rounding to the model's float32: its
# "zero" singular values become ~1e-8 (relative), far below anything the sampler can resolve. Ranks are
# therefore counted relative to the largest singular value with a float32-sized tolerance.
RANK_RTOL = 1e-5


def product_rank(model) -> int:
    ws = weights64(model)
    p = ws[0]
    for w in ws[1:]:
        p = w @ p
    return int(torch.linalg.matrix_rank(p, rtol=RANK_RTOL))


def hessian_rank(model) -> int:
    """Rank of the MSE Hessian at a true parameter = rank of the Jacobian of w -> vec(W_L ... W_1).

    For P = A W_l B (A: the layers above l, B: the layers below), vec(P) = (B^T ⊗ A) vec(W_l), column-major.
    """
    ws = weights64(model)
    blocks = []
    for l in range(len(ws)):
        above = torch.eye(ws[-1].shape[0], dtype=torch.float64)
        for w in reversed(ws[l + 1 :]):
            above = above @ w  # W_L ... W_{l+1}
        below = torch.eye(ws[0].shape[1], dtype=torch.float64)
        for w in ws[:l]:
            below = w @ below
        blocks.append(torch.kron(below.T.contiguous(), above))
    return int(torch.linalg.matrix_rank(torch.cat(blocks, 1), rtol=RANK_RTOL))


def make_problem(dln_mod, widths: list[int], layer: int, rank: int, n: int, seed: int, init: str):
    """DLN at a true parameter with layer `layer` truncated to `rank`; n noiseless samples."""
    g = torch.Generator().manual_seed(seed)
    model = dln_mod.dln(widths)
    with torch.no_grad():
        for lay in model.layers:
            if init == "orth":
                torch.nn.init.orthogonal_(lay.weight, generator=g)
            else:  # "gauss": N(0, 1/fan_in), the Haiku default used by Furman & Lau
                lay.weight.copy_(torch.randn(lay.weight.shape, generator=g) / math.sqrt(lay.weight.shape[1]))
        w = model.layers[layer].weight
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        s[rank:] = 0
        w.copy_((u * s) @ vh)
        x = (torch.rand(n, widths[0], generator=g) * 2 - 1) * 10.0
        y = model(x)
    return model, (x, y)


def parse_configs(text: str) -> list[list[int]]:
    return [[int(h) for h in part.split(",")] for part in text.split(";") if part.strip()]


def default_ranks(widths: list[int]) -> list[int]:
    m = min(widths)
    return sorted({1, m // 2, m - 1, m} - {0})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="';'-separated width lists [in,hidden...,out]")
    ap.add_argument("--ranks", default="auto", help="comma-separated, or 'auto': 1, m//2, m-1, m (m = min(widths))")
    ap.add_argument("--layer", default="middle", help="which layer to truncate: an index, 'middle' (L//2) or 'all'")
    ap.add_argument("--init", choices=["orth", "gauss"], default="orth")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--lr", type=float, default=5e-7)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--nbeta", type=float, default=None, help="default n / log n")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--burnin", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--param-seed", type=int, default=2000, help="true parameters and inputs (+ row index)")
    ap.add_argument("--method", default="vmap", choices=["auto", "vmap", "loop"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these sizes)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dln_mod = load_dln_module()
    configs = parse_configs(args.configs)
    nbeta = args.nbeta or args.n / math.log(args.n)
    print(
        f"n={args.n} nβ={nbeta:.1f} ε={args.lr:g} γ={args.gamma:g} chains={args.chains} burnin={args.burnin} "
        f"draws={args.draws} batch={args.batch_size} seed={args.seed} init={args.init} threads={args.threads}"
    )
    header = (
        f"{'widths':<20} {'d':>4} {'layer':>5} {'r':>3} {'rk P':>4} {'λ formula':>9} {'rk(H)/2':>7} {'d/2':>6} "
        f"{'λ̂':>7} {'s.e.':>5} {'rel diff':>8} {'vs rk(H)/2':>10} {'verdict':<7} {'s':>5}"
    )
    print(header)
    print("-" * len(header))
    t_start = time.perf_counter()
    row = 0
    for widths in configs:
        num_layers = len(widths) - 1
        if args.layer == "all":
            layers = list(range(num_layers))
        elif args.layer == "middle":
            layers = [num_layers // 2]
        else:
            layers = [int(args.layer)]
        ranks = default_ranks(widths) if args.ranks == "auto" else [int(r) for r in args.ranks.split(",")]
        for layer in layers:
            for r in ranks:
                if not 0 <= r <= min(widths):
                    print(f"{str(widths):<20} skipping r={r}: outside 0..{min(widths)}")
                    continue
                model, data = make_problem(dln_mod, widths, layer, r, args.n, args.param_seed + row, args.init)
                row += 1
                config = SGLDConfig(
                    lr=args.lr,
                    localization=args.gamma,
                    nbeta=args.nbeta,
                    chains=args.chains,
                    draws=args.draws,
                    burnin=args.burnin,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    method=args.method,
                    device="cpu",
                )
                t0 = time.perf_counter()
                res = estimate_llc(model, data, loss_fn=mse, config=config)
                lam = dln_learning_coefficient(widths, r)
                d = dln_parameter_count(widths)
                rel = (res.llc_mean - lam) / lam if lam else float("nan")
                half_rank = hessian_rank(model) / 2
                rel_h = (res.llc_mean - half_rank) / half_rank if half_rank else float("nan")
                print(
                    f"{str(widths):<20} {d:>4} {layer:>5} {r:>3} {product_rank(model):>4} {lam:>9.2f} "
                    f"{half_rank:>7.1f} {d / 2:>6.1f} {res.llc_mean:>7.2f} {res.llc_se:>5.2f} "
                    f"{rel:>+8.3f} {rel_h:>+10.3f} {res.verdict:<7} {time.perf_counter() - t0:>5.1f}",
                    flush=True,
                )
                for reason in res.diagnostics.reasons:
                    print(f"{'':<20}   {reason}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
