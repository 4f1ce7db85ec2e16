"""The verdict (slt_probe/engine/diagnostics.py) measured on runs whose correctness is known.

    python benchmarks/verdicts.py                  # every problem and setting, seeds 0-2, ~1 min on one CPU thread
    python benchmarks/verdicts.py --seeds 0 --only regression

Three problems with a closed-form λ, each at the settings that estimate it well ("good") and at deliberately
bad ones; the verdict of a good run should be `ok`, that of a bad run `warn` or `fail` (`fail` for wrong data
and divergence):

  regression  y = W x, W 4 x 3, x ~ N(0, I), noiseless targets, MSE, sampled at W*: regular, λ = d/2 = 6
              (as tests/validation/test_regular.py, with 8 chains instead of 256).
  crossing    the normal crossing f(x, w) = x w1^0 w2^2, x ~ N(0, 1), target 0, MSE: λ = 1/4
              (as tests/validation/test_potentials.py, 256 vmapped chains, nearly free).
  dln         the deep linear network slt_probe.engine.dln.dln_problem((8, 6, 4, 8)) at a full-rank true
              parameter: λ = 24 by Aoyagi's formula; its own settings (4 chains x 1000 draws).

Settings, each a change of the good one:
  lr x10, lr x1000   the step size too large (x1000: every chain diverges)
  lr /10, lr /100    too small: the chains are still climbing away from w* when the draws start
  draws 1, 2, 5      too few draws for R-hat, ESS or the drift check
  chains 1           no between-chain spread: no standard error
  wrong data         w* of the problem evaluated on another problem's data (seed + 1): w* is not a minimum
  off w*             the targets perturbed so that w* is near, not at, a minimum: λ̂ about -15, the size of
                     a model read on data it was not trained on (issue 14: -12 to -21)
Each setting runs with every seed: one line per (problem, setting, seed), then a markdown summary per
(problem, setting) -- the table in docs/method.md#diagnostics-and-verdicts.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from slt_probe import SGLDConfig, estimate_llc
from slt_probe.engine.dln import dln_problem, mse

N = 4096  # samples of the regression and the crossing


class PointModel(nn.Module):
    """A model that is nothing but its parameter vector w."""

    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w0.detach().clone().float())


def gaussian(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def regression(data_seed: int = 0, off: float = 0.0):
    """(model at W*_0, data (x, W x), loss, λ = 6): W = W*_s with s = data_seed (s != 0: the wrong data), plus
    off * N(0, 1) entries (data off w*: L_n(W*) = 3 off², so nβ L_n(W*) = 3000 off² with nβ = 1000)."""
    d_out, d_in = 4, 3
    w_star = gaussian((d_out, d_in), 1)

    def data(seed):
        w = gaussian((d_out, d_in), seed + 1) + off * gaussian((d_out, d_in), 99)
        x = gaussian((N, d_in), seed)
        return x, x @ w.T

    def loss_fn(model, batch):
        xb, yb = batch
        return (xb @ model.w.view(d_out, d_in).T - yb).square().mean()

    return PointModel(w_star.reshape(-1)), data(data_seed), loss_fn, 6.0


def crossing():
    """f(x, w) = x w2^2 (w1 does not enter), target 0: L = mean(x²) w2^4, λ = 1/4."""
    x = gaussian((N,), 0)

    def loss_fn(model, batch):
        (xb,) = batch
        return model.w[1].pow(4) * xb.square().mean()

    return PointModel(torch.zeros(2)), (x,), loss_fn, 0.25


def dln(data_seed: int = 0, off: float = 0.0):
    """As regression(): data_seed != 0 takes another DLN's data; off adds off * N(0, 1) x to the targets
    (nβ E|Δy|²/8 = 8686 * 33.3 off² with x uniform in [-10, 10]^8)."""
    p = dln_problem((8, 6, 4, 8), seed=0)
    x, y = p.data if data_seed == 0 else dln_problem((8, 6, 4, 8), seed=data_seed).data
    if off:
        y = y + x @ (off * gaussian((8, 8), 99)).T
    return p.model, (x, y), mse, p.llc


# the settings that estimate each problem well (tests/validation and slt_probe.engine.dln)
GOOD = {
    "regression": dict(nbeta=1000.0, lr=1e-4, localization=1.0, chains=8, burnin=200, draws=1000, batch_size=32),
    "crossing": dict(nbeta=10.0, lr=2.5e-3, localization=0.01, chains=256, burnin=200, draws=1000, batch_size=32),
    "dln": dict(lr=5e-7, localization=1.0, nbeta=None, chains=4, burnin=200, draws=1000, batch_size=500),
}

SETTINGS = [
    ("good", {}),
    ("lr x10", {"lr": 10}),
    ("lr x1000", {"lr": 1000}),
    ("lr /10", {"lr": 0.1}),
    ("lr /100", {"lr": 0.01}),
    ("draws 1", {"draws": 1}),
    ("draws 2", {"draws": 2}),
    ("draws 5", {"draws": 5}),
    ("chains 1", {"chains": 1}),
    ("wrong data", {"wrong": True}),
    ("off w*", {"off": True}),
]
EXPECTED = {"good": "ok", "wrong data": "fail", "off w*": "fail", "lr x1000": "fail"}  # anything else: not ok
# the size of the targets' perturbation that puts λ̂ near -15, the size of the issue's held-out reading
OFF = {"regression": 0.08, "dln": 0.004}


def run(problem: str, change: dict, seed: int):
    wrong = change.get("wrong", False)
    off = OFF.get(problem, 0.0) if change.get("off") else 0.0
    if problem == "regression":
        model, data, loss_fn, lam = regression(1 if wrong else 0, off)
    elif problem == "dln":
        model, data, loss_fn, lam = dln(1 if wrong else 0, off)
    else:
        if wrong or change.get("off"):
            return None  # w* = 0 is a minimum for any data: there is no wrong data for a potential
        model, data, loss_fn, lam = crossing()
    hp = dict(GOOD[problem])
    for k, v in change.items():
        if k == "lr":
            hp["lr"] *= v
        elif k not in ("wrong", "off"):
            hp[k] = v
    config = SGLDConfig(seed=seed, method="vmap", device="cpu", **hp)
    return lam, estimate_llc(model, data, loss_fn=loss_fn, config=config)


def span(values, fmt: str) -> str:
    """min-max of finite values (one value if they agree to the format), '-' when none is finite."""
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "-"
    lo, hi = format(min(v), fmt), format(max(v), fmt)
    return lo if lo == hi else f"{lo} to {hi}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="sampler seeds, comma-separated")
    parser.add_argument("--only", default="regression,crossing,dln", help="problems, comma-separated")
    parser.add_argument("--settings", default=None, help="settings to run, comma-separated (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = None if args.settings is None else set(args.settings.split(","))

    print(f"{'problem':<11}{'setting':<12}{'seed':>4} {'λ':>6} {'λ̂':>10} {'s.e.':>8} {'R-hat':>7} {'ESS':>6} "
          f"{'MALA':>5} {'bias':>5} {'drift':>6} {'drift p':>8}  {'verdict':<5} as expected  reasons")
    wrong_verdicts = 0
    summary = []  # one markdown row per (problem, setting) over the seeds
    start = time.perf_counter()
    for problem in args.only.split(","):
        for name, change in SETTINGS:
            if wanted is not None and name not in wanted:
                continue
            runs = []
            for seed in seeds:
                out = run(problem, change, seed)
                if out is None:
                    continue
                lam, r = out
                runs.append(r)
                d = r.diagnostics
                want = EXPECTED.get(name)
                good = r.verdict == want if want else r.verdict != "ok"
                wrong_verdicts += not good
                print(f"{problem:<11}{name:<12}{seed:>4} {lam:>6.3g} {r.llc_mean:>10.4g} {r.llc_se:>8.2g} "
                      f"{d.rhat:>7.3f} {d.ess_bulk:>6.0f} {d.acceptance:>5.3f} {d.step_bias:>5.3f} {d.drift:>+6.2f} "
                      f"{d.drift_p:>8.1e}  {r.verdict:<5} {'yes' if good else 'NO ':<11}  {' | '.join(d.reasons)}",
                      flush=True)
            if not runs:
                continue
            ds = [r.diagnostics for r in runs]
            llc = span([r.llc_mean for r in runs], ".4g")
            keys = sorted({k for d in ds for k in d.failed})
            summary.append(f"| {problem} | {name} | {lam:g} | {llc} | {span([d.rhat for d in ds], '.2f')} | "
                           f"{span([d.ess_bulk for d in ds], '.0f')} | {span([100 * d.step_bias for d in ds], '.0f')} | "
                           f"{' '.join(r.verdict for r in runs)} | {', '.join(keys) or '-'} |")
    print(f"\n{wrong_verdicts} unexpected verdict(s); {time.perf_counter() - start:.0f} s\n")
    print(f"seeds {args.seeds}; 'bias %': the step bias the MALA acceptance implies; 'checks': Diagnostics.failed\n")
    print("| problem | setting | λ | λ̂ | R-hat | ESS | bias % | verdicts | checks |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
