"""The two samplers side by side: plain SGLD and RMSProp-preconditioned SGLD (SGLDConfig.sampler).

    python benchmarks/samplers.py                          # DLNs from 104 to 180k parameters
    python benchmarks/samplers.py --widths "8,6,4,8;700,700,700"
    python benchmarks/samplers.py --large                  # full-rank DLNs of ~1M parameters (~25 min, one thread)

DLNs at full-rank true parameters (slt_probe.engine.dln.dln_problem: Furman & Lau 2024's setting, orthogonal
layers, n = 1e5, nβ = n/log n, γ 1, batch 500, 4 chains × 1000 draws + 200 burn-in), each sampler at its own ε
(DLN_LR), λ̂ against Aoyagi's λ, R-hat and ESS.

--large prints the same table for the ~1M-parameter DLNs of LARGE, each at its own n, ε, burn-in and draws (the
table adds n and steps): the size Furman & Lau 2024 (arXiv 2402.03698) show is measurable.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from slt_probe.engine.dln import dln_problem, mse  # noqa: E402
from slt_probe.engine.estimate import estimate_llc  # noqa: E402

SAMPLERS = ("sgld", "rmsprop")

# ~1M-parameter full-rank DLNs: widths -> (n, {sampler: (ε, burn-in, draws)}); the ladders that chose them and the
# results are in docs/validation.md (the two samplers side by side).
# - n = 1e6, as Furman & Lau 2024 from 100k parameters up (App. E.2): at n = 1e5 no ε flattens the trace at this size
#   (the chains keep drifting along the DLN's flat directions W_l -> A W_l, W_l+1 -> W_l+1 A^-1, held only by γ 1).
# - ε: the smallest rung of a ×3 ladder (200 burn-in + 400 draws) whose trace was flat (R-hat ≤ 1.1), a rule blind to
#   λ; larger than Furman & Lau's 5e-8 (with 5e4 steps) because this budget is ~2000 steps.
# - RMSProp's G = 1/(0.1 + sqrt(V)) sits at ~10 here (its rungs matched SGLD's at 10× ε): hence ε ÷ 10.
LARGE = {
    (700, 700, 700): (1_000_000, {"sgld": (3e-6, 400, 1600), "rmsprop": (3e-7, 400, 1600)}),
    (500, 500, 500, 500, 500): (1_000_000, {"sgld": (1e-6, 400, 1600), "rmsprop": (1e-7, 400, 1600)}),
}


def table(runs) -> None:
    """One markdown row per (problem, config) that `runs` yields: λ̂ against Aoyagi's λ, and the diagnostics."""
    print("| widths | parameters | n | λ | sampler | ε | burn-in + draws | λ̂ ± s.e. | error | R-hat | ESS | verdict "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p, cfg in runs:
        t0 = time.perf_counter()
        r = estimate_llc(p.model, p.data, loss_fn=mse, config=cfg)
        d = r.diagnostics
        print(f"| {[m.in_features for m in p.model] + [p.model[-1].out_features]} | {r.num_params} | "
              f"{p.data[0].shape[0]:g} | {p.llc:g} | {cfg.sampler} | {cfg.lr:g} | {cfg.burnin} + {cfg.draws} | "
              f"{r.llc_mean:.6g} ± {r.llc_se:.3g} | {r.llc_mean / p.llc - 1:+.1%} | {d.rhat:.3f} | "
              f"{d.ess_bulk:.0f} | {d.verdict} | {time.perf_counter() - t0:.1f} |", flush=True)


def default_runs(widths_list: list[list[int]], draws: int):
    for widths in widths_list:
        for sampler in SAMPLERS:
            p = dln_problem(widths, sampler=sampler)
            yield p, replace(p.config, draws=draws)


def large_runs():
    for widths, (n, settings) in LARGE.items():
        p = dln_problem(list(widths), n=n)  # built once (n = 1e6: ~1 min); the sampler is set per row
        for sampler in SAMPLERS:
            lr, burnin, draws = settings[sampler]
            yield p, replace(p.config, sampler=sampler, lr=lr, burnin=burnin, draws=draws)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="8,6,4,8;16,16,16,16;64,64,64;300,300,300",
                    help="DLN widths, ';'-separated configurations")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--large", action="store_true",
                    help="the ~1M-parameter DLNs of LARGE at their own n, ε and draws (--widths, --draws ignored)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    table(large_runs() if args.large else
          default_runs([[int(h) for h in w.split(",")] for w in args.widths.split(";")], args.draws))


if __name__ == "__main__":
    main()
