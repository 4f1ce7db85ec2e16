"""The two samplers side by side: plain SGLD and RMSProp-preconditioned SGLD (SGLDConfig.sampler).

    python benchmarks/samplers.py                          # DLNs from 104 to 180k parameters
    python benchmarks/samplers.py --widths "8,6,4,8;700,700,700"

DLNs at full-rank true parameters (slt_probe.engine.dln.dln_problem: Furman & Lau 2024's setting, orthogonal
layers, n = 1e5, nβ = n/log n, γ 1, batch 500, 4 chains × 1000 draws + 200 burn-in), each sampler at its own ε
(DLN_LR), λ̂ against Aoyagi's λ, R-hat and ESS.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from slt_probe.engine.dln import DLN_LR, dln_problem, mse  # noqa: E402
from slt_probe.engine.estimate import estimate_llc  # noqa: E402

SAMPLERS = ("sgld", "rmsprop")


def dln_rows(widths_list: list[list[int]], draws: int) -> None:
    print("| widths | parameters | λ | sampler | ε | λ̂ ± s.e. | error | R-hat | ESS | verdict | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for widths in widths_list:
        for sampler in SAMPLERS:
            p = dln_problem(widths, sampler=sampler)
            cfg = replace(p.config, draws=draws)
            t0 = time.perf_counter()
            r = estimate_llc(p.model, p.data, loss_fn=mse, config=cfg)
            d = r.diagnostics
            print(f"| {widths} | {r.num_params} | {p.llc:g} | {sampler} | {DLN_LR[sampler]:g} | "
                  f"{r.llc_mean:.2f} ± {r.llc_se:.2f} | {r.llc_mean / p.llc - 1:+.1%} | {d.rhat:.3f} | "
                  f"{d.ess_bulk:.0f} | {d.verdict} | {time.perf_counter() - t0:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="8,6,4,8;16,16,16,16;64,64,64;300,300,300",
                    help="DLN widths, ';'-separated configurations")
    ap.add_argument("--draws", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dln_rows([[int(h) for h in w.split(",")] for w in args.widths.split(";")], args.draws)


if __name__ == "__main__":
    main()
