"""Stage detection on curves it did not produce: how the noise scale is obtained decides what is found.

Synthetic λ̂ curves with known stages (tests/helpers/curves.py), on two checkpoint grids:
  log    60 log-spaced checkpoints over 4 decades (1-3 changes)
  dense  every 100 steps to 50k beside 5 log-spaced early ones, 505 checkpoints, most crowded into the last decade
         on a log axis (1-3 changes), as published runs save them
and controls without transitions (linear in log step, one wide logistic, saturating, constant) on both grids.
Per-chain λ̂ = λ(t)(1 + 5% N(0,1)), 4 chains: the true s.e. is 2.5% of λ.

Conditions: what the detector is given besides the means:
  chains  the per-chain values (our own walks)
  right   the true s.e. (stated: llc_se)
  x0.3, x3, x30   the s.e. times 0.3, 3, 30 (x30 is a "std" column of spread over draws, passed as s.e.)
  absent  nothing: the noise comes from the curve
  x3 trusted      the s.e. times 3, with trust_se (what the detector did before it checked a stated s.e.)

A boundary (spurt, with its sign) is found when a detected one lies within ±1 checkpoint or ±0.05 decades (±12% in
step) of the truth; stage types are scored on the curves whose boundaries were all found and nothing else.
Thinning: the dense curves again with every 2nd and every 4th checkpoint of the dense stretch (steps >= 1000)
kept; a thinned curve agrees when its boundaries match the full curve's one for one.

    python benchmarks/transitions_noise.py [--curves 60] [--controls 10] [--resamples 100] [--workers 2]

(PYTHONPATH=<an older checkout> with --conditions chains,right,x0.3,x3,x30 measures an older detector the same way.)

Prints one table per grid (precision / recall / confident recall of boundaries and spurts, types, confident and
tentative false boundaries per control curve, the s.e. check's verdict), the range of the scatter / s.e. ratio
the check sees (which decided se_factor = 2), and the thinning agreement.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

import numpy as np  # noqa: E402
from curves import dense_steps, random_curve, random_dense_curve  # noqa: E402

from slt_probe.analysis.transitions import TransitionConfig, detect_transitions  # noqa: E402

REL = 0.05
CONDITIONS = {"chains": None, "right": 1.0, "x0.3": 0.3, "x3": 3.0, "x30": 30.0, "absent": None, "x3 trusted": 3.0}
CONTROLS = {
    "linear in log step": lambda x: 5 + 10 * (x - 1),
    "one wide logistic": lambda x: 5 + 30 / (1 + np.exp(-(x - 3) / 0.8)),
    "saturating": lambda x: 40 - 35 * np.exp(-(x - 1)),
    "constant": lambda x: 20 + 0 * x,
}
TOL_DECADES = 0.05


def grid_steps(grid: str) -> np.ndarray:
    return np.unique(np.round(np.logspace(1, 5, 60)).astype(np.int64)) if grid == "log" else dense_steps()


def detect(step, per_chain, loss, condition, cfg):
    mean, se = per_chain.mean(1), per_chain.std(1, ddof=1) / np.sqrt(per_chain.shape[1])
    if condition == "chains":
        return detect_transitions(step, mean, loss=loss, llc_per_chain=per_chain, config=cfg)
    if condition == "absent":
        return detect_transitions(step, mean, loss=loss, config=cfg)
    if condition.endswith("trusted"):
        cfg = TransitionConfig(**{**cfg.__dict__, "trust_se": True})
    return detect_transitions(step, mean, se * CONDITIONS[condition], loss, config=cfg)


def near(step, i, j) -> bool:
    return abs(i - j) <= 1 or abs(np.log10(step[i] / step[j])) <= TOL_DECADES


def score_curve(job):
    """One synthetic curve under one condition: counts of boundaries, spurts and types."""
    grid, seed, condition, resamples, thin = job
    rng = np.random.default_rng(seed)
    gen = random_curve if grid == "log" else random_dense_curve
    c = gen(rng, int(rng.integers(1, 4)), rel=REL)
    cfg = TransitionConfig(resamples=resamples)
    t = detect(c.step, c.per_chain, c.loss, condition, cfg)
    found = [b.index for b in t.boundaries]
    out = {"tp": sum(any(near(c.step, f, b) for f in found) for b in c.boundaries),
           "fp": sum(not any(near(c.step, f, b) for b in c.boundaries) for f in found),
           "true": len(c.boundaries),
           "tp_conf": sum(any(near(c.step, b.index, tb) and not b.tentative for b in t.boundaries)
                          for tb in c.boundaries),
           "rescaled": bool(getattr(t, "noise", {}).get("rescaled")),
           "ratio": getattr(t, "noise", {}).get("scatter_ratio", np.nan)}
    all_found = out["tp"] == len(c.boundaries) == len(found)
    out["typed"] = len(c.types) if all_found else 0
    out["typed_ok"] = sum(s.type == ty for s, ty in zip(t.stages, c.types)) if all_found else 0
    sp = [(s.index, int(np.sign(s.rate)), s.tentative) for s in t.spurts]
    if not c.spurts_ambiguous:
        out["sp_true"] = len(c.spurts)
        out["sp_tp"] = sum(any(near(c.step, f, i) and g == sg for f, g, _ in sp) for i, sg in c.spurts)
        out["sp_tp_conf"] = sum(any(near(c.step, f, i) and g == sg and not tent for f, g, tent in sp)
                                for i, sg in c.spurts)
        out["sp_fp"] = sum(not any(near(c.step, f, i) and g == sg for i, sg in c.spurts) for f, g, _ in sp)
    if thin:  # the same curve with the dense stretch thinned: do the boundaries stay?
        def alike(a, b):
            return len(a) == len(b) and all(abs(np.log10(u / v)) <= TOL_DECADES for u, v in zip(a, b))

        agree = {}
        for k in (2, 4):
            keep = (c.step < 1000) | (np.arange(len(c.step)) % k == 0)
            tk = detect(c.step[keep], c.per_chain[keep], c.loss[keep], condition, cfg)
            agree[k] = alike([c.step[b.index] for b in t.boundaries], [c.step[keep][b.index] for b in tk.boundaries])
            agree[f"{k} confident"] = alike([c.step[b.index] for b in t.boundaries if not b.tentative],
                                            [c.step[keep][b.index] for b in tk.boundaries if not b.tentative])
        out["thin"] = agree
    return out


def score_control(job):
    grid, name, seed, condition, resamples = job
    step = grid_steps(grid)
    x = np.log10(step)
    rng = np.random.default_rng(seed)
    per_chain = CONTROLS[name](x)[:, None] * (1 + REL * rng.standard_normal((len(x), 4)))
    t = detect(step, per_chain, 4 - 0.5 * x, condition, TransitionConfig(resamples=resamples))
    return {"confident": sum(not b.tentative for b in t.boundaries), "tentative": sum(b.tentative for b in t.boundaries),
            # the wide logistic does have a steepest point, a broad but real spurt: only the others count
            "spurts_confident": sum(not s.tentative for s in t.spurts) if name != "one wide logistic" else 0,
            "rescaled": bool(getattr(t, "noise", {}).get("rescaled")),  # (getattr: runs on older versions too)
            "ratio": getattr(t, "noise", {}).get("scatter_ratio", np.nan)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", type=int, default=60, help="synthetic curves per grid and condition")
    p.add_argument("--controls", type=int, default=10, help="curves per control function, grid and condition")
    p.add_argument("--resamples", type=int, default=100, help="bootstrap resamples of each detection")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--grids", default="log,dense")
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    args = p.parse_args()
    conditions = args.conditions.split(",")
    with ProcessPoolExecutor(args.workers) as pool:
        for grid in args.grids.split(","):
            print(f"\n## {grid} grid ({len(grid_steps(grid))} checkpoints): {args.curves} curves, "
                  f"{args.controls * len(CONTROLS)} controls per condition, {args.resamples} resamples\n")
            print("| s.e. given | boundaries P / R (confident R) | types | spurts P / R (confident R) | "
                  "controls: confident / tentative false boundaries per curve | confident false spurts per curve (no wide "
                  "logistic) | "
                  "s.e. rescaled (curves / controls) |")
            print("|---|---|---|---|---|---|---|")
            thin, ratio_lines = {}, []
            for cond in conditions:
                jobs = [(grid, 1000 + i, cond, args.resamples, grid == "dense" and cond in ("right", "absent"))
                        for i in range(args.curves)]
                r = list(pool.map(score_curve, jobs))
                ctrl = list(pool.map(score_control, [(grid, name, s, cond, args.resamples) for name in CONTROLS
                                                     for s in range(args.controls)]))
                tot = {k: sum(x.get(k, 0) for x in r) for k in ("tp", "fp", "true", "tp_conf", "typed", "typed_ok",
                                                               "sp_true", "sp_tp", "sp_fp", "sp_tp_conf")}
                prec = tot["tp"] / max(tot["tp"] + tot["fp"], 1)
                rec, rec_c = tot["tp"] / max(tot["true"], 1), tot["tp_conf"] / max(tot["true"], 1)
                sp_p = tot["sp_tp"] / max(tot["sp_tp"] + tot["sp_fp"], 1)
                sp_r, sp_rc = tot["sp_tp"] / max(tot["sp_true"], 1), tot["sp_tp_conf"] / max(tot["sp_true"], 1)
                n_c = len(ctrl)
                conf = sum(x["confident"] for x in ctrl) / n_c
                tent = sum(x["tentative"] for x in ctrl) / n_c
                sp_conf = sum(x["spurts_confident"] for x in ctrl) / (n_c * (len(CONTROLS) - 1) / len(CONTROLS))
                resc = f"{sum(x['rescaled'] for x in r)}/{len(r)} / {sum(x['rescaled'] for x in ctrl)}/{n_c}"
                print(f"| {cond} | {prec:.2f} / {rec:.2f} ({rec_c:.2f}) | {tot['typed_ok']}/{tot['typed']} | "
                      f"{sp_p:.2f} / {sp_r:.2f} ({sp_rc:.2f}) | {conf:.3f} / {tent:.3f} | {sp_conf:.3f} | {resc} |",
                      flush=True)
                ratios = np.array([x["ratio"] for x in r + ctrl], dtype=float)
                if np.isfinite(ratios).any():
                    ratio_lines.append(f"scatter / s.e. ratio, s.e. {cond}: {np.nanmin(ratios):.2f} .. "
                                       f"{np.nanmax(ratios):.2f} over {len(ratios)} curves and controls")
                if any("thin" in x for x in r):
                    thin[cond] = {k: np.mean([x["thin"][k] for x in r]) for k in r[0]["thin"]}
            print("\n" + "\n".join(ratio_lines))
            for cond, agree in thin.items():
                print(f"\nthinning the dense stretch, s.e. {cond}: boundaries unchanged in "
                      + ", ".join(f"{v:.0%} of curves keeping 1/{k}" for k, v in agree.items())
                      + " (within ±0.05 decades, one for one)")


if __name__ == "__main__":
    main()
