"""Does `slt-probe calibrate`'s recommendation land near the true λ? Full-rank DLNs of several depths, widths and input
scales, both samplers: calibrate, then estimate with the recommended settings (as `walk --config` would, 1000
draws), and compare with Aoyagi's λ.

    python benchmarks/calibration.py                                  # 6 DLNs x 2 samplers, the default γ grid
    python benchmarks/calibration.py --localization 1,10,100 --sampler rmsprop

Each DLN is dln_problem(widths, n=20000, scale=...): a Haar-random full-rank true parameter, noiseless targets
(Furman & Lau 2024, arXiv 2402.03698), inputs uniform in [-scale, scale], nβ = n / log n. The sweep: the sampler's default lr grid (LR_GRID),
4 chains x --draws draws + draws/4 burn-in, batch 32. Prints one row per (DLN, sampler): the recommendation, the
checks it passed (or why nothing was recommended), λ̂ with it against λ, and the seconds of calibration.
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
from slt_probe.engine.sampler import SGLDConfig  # noqa: E402
from slt_probe.runs.calibrate import CalibrationGrid, calibrate  # noqa: E402

# (widths, input scale): depth 2-5, widths 4-20, λ 24-200; the input scale sets the curvature (∝ scale²), so the
# step size that suits one does not suit the next
CASES = [([8, 6, 4, 8], 1.0), ([6, 10, 8], 1.0), ([12, 8, 8, 8, 6], 1.0), ([16, 16], 3.0), ([10, 12, 6, 10], 0.3),
         ([20, 20, 20], 1.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sampler", nargs="+", default=["sgld", "rmsprop"])
    ap.add_argument("--localization", default="30,100,300", help="the γ grid (the CLI's default)")
    ap.add_argument("--draws", type=int, default=500, help="draws per chain in the sweep")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gammas = [float(g) for g in args.localization.split(",")]
    print("| DLN | scale | λ | sampler | recommended lr, γ | checks | λ̂ ± s.e. (1000 draws) | error | calibrate s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for widths, scale in CASES:
        p = dln_problem(widths, n=20_000, scale=scale)
        model, data, lam = p.model, p.data, p.llc
        for sampler in args.sampler:
            t0 = time.perf_counter()
            cal = calibrate([(1, model)], data, loss_fn=mse, grid=CalibrationGrid(localization=gammas),
                            config=SGLDConfig(chains=4, draws=args.draws, burnin=args.draws // 4, batch_size=32,
                                              sampler=sampler))
            seconds = time.perf_counter() - t0
            cfg = cal.recommended_config()
            if cfg is None:
                last = cal.bias_checks[-1].checks if cal.bias_checks else {}
                why = "; ".join(f"{k} {v}" for k, v in last.items() if v.startswith("failed")) or cal.advice[0]
                print(f"| {widths} | {scale:g} | {lam:g} | {sampler} | none ({len(cal.bias_checks)} candidates "
                      f"checked) | last: {why} | — | — | {seconds:.0f} |", flush=True)
                continue
            r = estimate_llc(model, data, loss_fn=mse, config=replace(cfg, draws=1000, burnin=250))
            passed = ", ".join(k for k, v in cal.recommendation.checks.items() if v.startswith("passed"))
            print(f"| {widths} | {scale:g} | {lam:g} | {sampler} | {cfg.lr:g}, {cfg.localization:g} "
                  f"({len(cal.bias_checks)} checked) | {passed} | {r.llc_mean:.2f} ± {r.llc_se:.2f} | "
                  f"{r.llc_mean / lam - 1:+.1%} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
