"""Is this estimate trustworthy? Convergence and health checks on the SGLD loss traces, with a verdict.

Verdict rules (each reason is a readable sentence in `Diagnostics.reasons`; docs/method.md has the table and the
runs that measured the levels, benchmarks/verdicts.py reruns them):
  fail  a chain diverged (non-finite loss; it is left out of λ̂), or no finite λ̂ at all;
        λ̂ < 0 significantly (one-sided p < NEG_FAIL_P across chains): w* is not a minimum of the loss on this data;
        split-R-hat > RHAT_FAIL with at least RHAT_FAIL_MIN_DRAWS draws per chain (the chains sample different
        distributions: still climbing away from w*, or descending from a w* that is not a minimum).
  warn  split-R-hat > RHAT_WARN; bulk ESS < ESS_WARN; MALA acceptance < ACCEPTANCE_WARN, or an acceptance that
        implies a step bias of λ̂ above STEP_BIAS_WARN; λ̂ < 0 within noise; λ̂ above d/2 beyond the step's
        usual bias and 3 s.e.; the trace still drifts (|Δλ̂| over the last half > 10%, p < 0.01 across chains);
        and every check that could not be made: fewer than 4 draws per chain (no R-hat, no ESS), fewer than 8
        (no drift check), one chain (no R-hat, no drift test, no standard error), a constant loss trace.
  ok    none of the above: a diagnostic that is NaN never reads ok.
R-hat and ESS are the rank-normalized split versions of Vehtari et al. 2021 (Bayesian Analysis 16(2), 667-718),
computed by ArviZ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import optimize, special, stats

# Vehtari et al. 2021 ask for R-hat < 1.01 before final inference; correct runs of the closed-form suites read
# 1.02-1.09 on the loss traces (slow flat directions that λ̂ barely depends on), so 1.01 would flag every one:
# 1.1, the older Gelman-Rubin level, is the warn level.
RHAT_WARN = 1.1
# Above 1.5 the pooled variance is > 2.25x the within-chain one: the chains sample different distributions.
# Measured (benchmarks/verdicts.py): lr 100x too small read 1.58-2.06 (λ̂ 64-97% low), a DLN on another's data
# 1.59-1.79, lr 10x too small 1.16-1.50; perfect iid chains (4 x 16 draws) never exceeded 1.17 in 300 runs.
RHAT_FAIL = 1.5
# With fewer draws split-R-hat is itself noise: 4 iid chains x 5 draws exceed 1.5 in 7% of runs (x 16: never).
RHAT_FAIL_MIN_DRAWS = 16
# Vehtari et al. 2021 suggest bulk ESS > 100 per chain for reliable R-hat and Monte Carlo s.e.; 50 in all is the
# least that still gives λ̂ a usable s.e. (correct 4-chain DLN runs of 1000 draws read 98-156).
ESS_WARN = 50.0
# Below 0.5 the step is larger than MALA's optimal (acceptance 0.574, Roberts & Rosenthal 1998); on a Gaussian a
# chain at ULA stationarity accepts at least half its steps (log α is symmetric about 0): lower, it is not there.
ACCEPTANCE_WARN = 0.5
# The λ̂ bias the MALA acceptance implies (mala_step_bias): good settings read 1-2% on the closed-form problems,
# lr 3x too large 4-4.5%, 5x 4-8%, 10x 8-24% (their true biases 3-5%, 3-9%, 10-23%).
STEP_BIAS_WARN = 0.05
# λ̂ > d/2 is impossible (no learning coefficient exceeds it); above it by less than this fraction is the step's
# own bias at good settings (regular regression: +1.1% in closed form, +2% measured with 256 chains).
BOUND_TOL = 0.05
# At a minimum E[λ̂] = λ > 0: λ̂ < 0 with one-sided p below this (t-test across chains, as DRIFT_P) says w* is not
# one. A t-test, not a fixed number of s.e.: two chains reading 5 s.e. below 0 happen by chance in 6% of runs.
NEG_FAIL_P = 0.01
DRIFT_WARN = 0.1  # relative change of λ̂ between the third and fourth quarter of the draws
DRIFT_P = 0.01  # ... and significant across chains (t-test, two-sided p); not checked with one chain
RHAT_MIN_DRAWS = 4  # split-R-hat and ESS split each chain in two: arviz returns NaN below 4 draws
DRIFT_MIN_DRAWS = 8  # the drift check compares quarters of at least 2 draws


# what a failed diagnostic means, and what to try (keys: Diagnostics.failed, estimate.failed_checks; calibrate advises)
ADVICE = {
    "diverged": "chains diverged: lower lr (or nbeta)",
    "mala": "the MALA acceptance says the step is too large for this nbeta: lower lr",
    "negative": "negative λ̂: the checkpoint is not near a minimum of the loss on this data; or lower lr, raise localization",
    "drift": "the trace still drifts: more burn-in, or a larger lr so the chains equilibrate",
    "rhat": "chains disagree (R-hat > 1.1): more draws or burn-in, or a larger lr",
    "ess": "too few effective samples (ESS < 50): more draws, or a larger lr",
    "bound": "λ̂ above d/2: lr too large",
    "draws": "too few draws per chain to check convergence: at least 8 (R-hat, ESS and drift), better a few hundred",
    "chains": "one chain: no R-hat and no standard error: run at least 2 chains, better 4",
    "constant": "the loss does not change along the chains: raise lr, or check that the sampled parameters affect the loss",
}


@dataclass
class Diagnostics:
    verdict: str = "ok"  # ok | warn | fail
    reasons: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # ADVICE keys of the checks that did not pass (warn or fail)
    rhat: float = float("nan")  # split-R-hat of the loss traces
    ess_bulk: float = float("nan")  # effective sample size of the loss traces (all chains)
    ess_tail: float = float("nan")
    acceptance: float = float("nan")  # mean MALA acceptance probability (post burn-in)
    acceptance_per_chain: list[float] = field(default_factory=list)
    step_bias: float = float("nan")  # relative λ̂ bias the acceptance implies (mala_step_bias)
    drift: float = float("nan")  # (λ̂ over the 4th quarter − λ̂ over the 3rd) / |λ̂|
    drift_z: float = float("nan")  # that change in standard errors across chains
    drift_p: float = float("nan")  # two-sided p-value of drift_z (t with chains − 1 dof)
    diverged: list[dict] = field(default_factory=list)  # {"chain", "step", "draw"} of first non-finite loss
    chains_ok: int = 0
    method: str = ""  # vmap | loop | devinterp
    notes: list[str] = field(default_factory=list)


def _rhat_ess(x: np.ndarray) -> tuple[float, float, float]:
    """x: [chains, draws] -> (split R-hat, bulk ESS, tail ESS) via arviz-stats; R-hat is NaN for one chain."""
    from arviz_stats.base import array_stats

    if x.shape[1] < RHAT_MIN_DRAWS or not np.isfinite(x).all() or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rhat = float(array_stats.rhat(x, chain_axis=0, draw_axis=1))
    ess_bulk = float(array_stats.ess(x, chain_axis=0, draw_axis=1, method="bulk"))
    ess_tail = float(array_stats.ess(x, chain_axis=0, draw_axis=1, method="tail", prob=0.1))
    return rhat, ess_bulk, ess_tail


def mala_step_bias(acceptance: float, num_params: int) -> float:
    """The relative bias of λ̂ that a MALA acceptance rate implies, for a Gaussian with d equally stiff directions.

    A chain at the stationary law of the unadjusted Langevin step ε on N(0, 1/h) has log α ~ N(0, σ²) with
    σ² = d s³ / 16, s = ε h (measured by simulation for d = 1 ... 10⁴, s ≤ 0.3; 1/16 slightly overstates s above),
    so its mean acceptance is 1/2 + e^{σ²/2} Φ(−σ) = (1 + erfcx(σ/√2)) / 2; and its variance, hence λ̂, is
    inflated by 1 / (1 − s/4). Spreading the rejections over all d sampled parameters gives the smallest s:
    where only some directions are stiff (a DLN: 48 of 104) the true bias is larger (measured 22%, implied 19%).
    """
    if not (math.isfinite(acceptance) and num_params > 0):
        return float("nan")
    if acceptance >= 1.0:
        return 0.0
    def gap(sigma: float) -> float:  # mean acceptance at this σ minus the measured one; falls from 1 - acc to -acc + 1/2
        return (1 + special.erfcx(sigma / math.sqrt(2))) / 2 - acceptance

    if gap(1e4) >= 0:  # at or below 1/2 + 4e-5: no finite step explains it
        return float("inf")
    sigma = optimize.brentq(gap, 0.0, 1e4)
    s = (16 * sigma**2 / num_params) ** (1 / 3)
    return s / (4 - s) if s < 4 else float("inf")


def diagnose(
    loss: np.ndarray,
    burnin: int,
    nbeta: float,
    init_loss: float,
    llc_per_chain: np.ndarray,
    num_params: int,
    mala: Optional[np.ndarray] = None,
    mala_step: Optional[np.ndarray] = None,
    method: str = "",
    notes: Optional[list[str]] = None,
) -> Diagnostics:
    """loss: [chains, burnin + draws] minibatch losses; llc_per_chain: [chains] (NaN for diverged chains)."""
    d = Diagnostics(method=method, notes=list(notes or []))
    fail, warn, failed = [], [], []

    def flag(to: list, key: str, reason: str) -> None:
        to.append(reason)
        if key not in failed:
            failed.append(key)

    finite = np.isfinite(loss)
    for c in np.flatnonzero(~finite.all(axis=1)):
        step = int(np.argmin(finite[c]))
        d.diverged.append({"chain": int(c), "step": step, "draw": step - burnin})
        where = f"draw {step - burnin}" if step >= burnin else f"burn-in step {step}"
        flag(fail, "diverged", f"chain {c} diverged (non-finite loss at {where}); left out of λ̂")
    ok = finite.all(axis=1)
    d.chains_ok = int(ok.sum())
    llc = float(np.mean(llc_per_chain[ok])) if d.chains_ok else float("nan")
    if not math.isfinite(llc):
        flag(fail, "diverged", "no finite λ̂: every chain diverged (lower lr or nbeta)")

    draws = loss[ok, burnin:]  # [ok chains, draws]
    n = draws.shape[1]
    if d.chains_ok:
        d.rhat, d.ess_bulk, d.ess_tail = _rhat_ess(draws)
        if n < RHAT_MIN_DRAWS:
            flag(warn, "draws", f"too few draws to check convergence: R-hat and ESS need at least {RHAT_MIN_DRAWS} "
                                f"draws per chain, the drift check {DRIFT_MIN_DRAWS}; got {n}")
        elif n < DRIFT_MIN_DRAWS:
            flag(warn, "draws", f"too few draws for the drift check: it needs at least {DRIFT_MIN_DRAWS} draws "
                                f"per chain; got {n}")
        if n >= RHAT_MIN_DRAWS and np.ptp(draws) == 0:
            flag(warn, "constant", "the loss trace is constant: R-hat and ESS are undefined (the chains did not "
                                   "move, or the sampled parameters do not change the loss)")
        elif d.chains_ok == 1:
            flag(warn, "chains", "one chain: no R-hat, no drift test and no standard error of λ̂ (they compare "
                                 "chains): run at least 2, better 4")
        elif n >= RHAT_MIN_DRAWS and not math.isfinite(d.rhat):
            flag(warn, "rhat", "R-hat could not be computed")
        if d.rhat > RHAT_FAIL and n >= RHAT_FAIL_MIN_DRAWS:
            flag(fail, "rhat", f"split-R-hat {d.rhat:.3f} > {RHAT_FAIL}: the chains sample different distributions "
                               "(still moving away from w*, or w* is not a minimum)")
        elif d.rhat > RHAT_WARN:
            flag(warn, "rhat", f"split-R-hat {d.rhat:.3f} > {RHAT_WARN}: chains disagree (more draws or burn-in)")
        if d.ess_bulk < ESS_WARN:
            flag(warn, "ess", f"effective sample size {d.ess_bulk:.0f} < {ESS_WARN:.0f} (more draws or chains)")

    if mala is not None and mala.size and d.chains_ok:
        keep = np.asarray(mala_step) >= burnin
        per_chain = mala[:, keep] if keep.any() else mala
        d.acceptance_per_chain = [float(v) for v in np.nanmean(per_chain, axis=1)]
        acc = float(np.nanmean(per_chain[ok])) if np.isfinite(per_chain[ok]).any() else float("nan")
        d.acceptance = acc
        d.step_bias = mala_step_bias(acc, num_params)
        if acc < ACCEPTANCE_WARN:
            flag(warn, "mala", f"MALA acceptance {acc:.2f} < {ACCEPTANCE_WARN}: lr is too large for this nbeta")
        elif d.step_bias > STEP_BIAS_WARN:
            flag(warn, "mala", f"MALA acceptance {acc:.3f} over {num_params} parameters implies a step that biases "
                               f"λ̂ by about +{100 * d.step_bias:.0f}% (> {100 * STEP_BIAS_WARN:.0f}%): lower lr")

    if math.isfinite(llc):
        if d.chains_ok > 1:
            se = float(np.std(llc_per_chain[ok], ddof=1) / math.sqrt(d.chains_ok))
        else:  # one chain: the Monte Carlo s.e. of its mean loss, from its ESS (NaN below 4 draws)
            se = float(nbeta * np.std(draws) / math.sqrt(d.ess_bulk)) if d.ess_bulk > 0 else float("nan")
        if llc < 0:
            z = -llc / se if se > 0 else math.inf if se == 0 else math.nan
            # one-sided p of λ̂ >= 0: t with chains - 1 dof; one chain: normal, its s.e. from its ESS; NaN: no s.e.
            p = float(stats.t.sf(z, d.chains_ok - 1) if d.chains_ok > 1 else stats.norm.sf(z))
            sig = f"{z:.3g} s.e. below 0, p = {p:.2g}"
            if p < NEG_FAIL_P:  # False when p is NaN
                flag(fail, "negative", f"negative λ̂ ({llc:.4g}, {sig}): w* is not a minimum of the loss on this "
                                       "data (wrong data or checkpoint?), or lr is far too large")
            else:
                flag(warn, "negative", f"negative λ̂ ({llc:.4g}, {sig}): w* may not be a local minimum of the loss, "
                                       "or lr is too large")
        bound = (1 + BOUND_TOL) * num_params / 2
        if llc - 3 * (se if math.isfinite(se) else 0.0) > bound:  # a correct λ = d/2 lands above d/2 half the time
            flag(warn, "bound", f"λ̂ {llc:.4g} exceeds d/2 = {num_params / 2:g}, the bound on any learning "
                                f"coefficient, by more than {100 * BOUND_TOL:.0f}% and 3 s.e.: lr is too large")
        q = n // 4
        if q >= 2:
            third = draws[:, -2 * q : -q].mean(axis=1)
            fourth = draws[:, -q:].mean(axis=1)
            delta = nbeta * (fourth - third)  # [ok chains] change in λ̂
            d.drift = float(delta.mean() / max(abs(llc), 1e-12))
            if delta.size >= 2 and delta.std(ddof=1) > 0:
                d.drift_z = float(delta.mean() / (delta.std(ddof=1) / math.sqrt(delta.size)))
                # a t-test across chains: few chains make a z of 3 common by chance
                d.drift_p = float(stats.t.sf(abs(d.drift_z), delta.size - 1) * 2)
            if abs(d.drift) > DRIFT_WARN and d.drift_p < DRIFT_P:
                flag(warn, "drift", f"the trace still drifts: λ̂ moved {100 * d.drift:+.0f}% over the last half "
                                    "(more burn-in)")

    d.reasons = fail + warn
    d.failed = failed
    d.verdict = "fail" if fail else "warn" if warn else "ok"
    return d
