"""Is this estimate trustworthy? Convergence and health checks on the SGLD loss traces, with a verdict.

Verdict rules (each reason is a readable sentence in `Diagnostics.reasons`):
  fail  a chain diverged (non-finite loss; it is left out of λ̂), or no finite λ̂ at all.
  warn  split-R-hat > 1.1, bulk ESS < 50, MALA acceptance < 0.5, λ̂ < 0, λ̂ > d/2 by more than 3 s.e. (no
        learning coefficient exceeds d/2), or the trace still drifts at the end (|Δλ̂| over the last half > 10%, p < 0.01 across chains).
  ok    none of the above.
R-hat and ESS are the rank-normalized split versions of Vehtari et al. 2021, computed by ArviZ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import stats

RHAT_WARN = 1.1
ESS_WARN = 50.0
ACCEPTANCE_WARN = 0.5
DRIFT_WARN = 0.1  # relative change of λ̂ between the third and fourth quarter of the draws
DRIFT_P = 0.01  # ... and significant across chains (t-test, two-sided p); not checked with one chain


# what a failed diagnostic means, and what to try (estimate.failed_checks names them; calibrate advises with them)
ADVICE = {
    "diverged": "chains diverged: lower lr (or nbeta)",
    "mala": "MALA acceptance < 0.5: the step is too large for this nbeta; lower lr",
    "negative": "negative λ̂: raise localization or lower lr; or the checkpoint is not near a minimum",
    "drift": "the trace still drifts: more burn-in, or a larger lr so the chains equilibrate",
    "rhat": "chains disagree (R-hat > 1.1): more draws or burn-in, or a larger lr",
    "ess": "too few effective samples (ESS < 50): more draws, or a larger lr",
    "bound": "λ̂ above d/2: lr too large",
}


@dataclass
class Diagnostics:
    verdict: str = "ok"  # ok | warn | fail
    reasons: list[str] = field(default_factory=list)
    rhat: float = float("nan")  # split-R-hat of the loss traces
    ess_bulk: float = float("nan")  # effective sample size of the loss traces (all chains)
    ess_tail: float = float("nan")
    acceptance: float = float("nan")  # mean MALA acceptance probability (post burn-in)
    acceptance_per_chain: list[float] = field(default_factory=list)
    drift: float = float("nan")  # (λ̂ over the 4th quarter − λ̂ over the 3rd) / |λ̂|
    drift_z: float = float("nan")  # that change in standard errors across chains
    drift_p: float = float("nan")  # two-sided p-value of drift_z (t with chains − 1 dof)
    diverged: list[dict] = field(default_factory=list)  # {"chain", "step", "draw"} of first non-finite loss
    chains_ok: int = 0
    method: str = ""  # vmap | loop | devinterp
    notes: list[str] = field(default_factory=list)


def _rhat_ess(x: np.ndarray) -> tuple[float, float, float]:
    """x: [chains, draws] -> (split R-hat, bulk ESS, tail ESS) via arviz-stats."""
    from arviz_stats.base import array_stats

    if x.shape[1] < 4 or not np.isfinite(x).all() or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rhat = float(array_stats.rhat(x, chain_axis=0, draw_axis=1))
    ess_bulk = float(array_stats.ess(x, chain_axis=0, draw_axis=1, method="bulk"))
    ess_tail = float(array_stats.ess(x, chain_axis=0, draw_axis=1, method="tail", prob=0.1))
    return rhat, ess_bulk, ess_tail


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
    fail, warn = [], []

    finite = np.isfinite(loss)
    for c in np.flatnonzero(~finite.all(axis=1)):
        step = int(np.argmin(finite[c]))
        d.diverged.append({"chain": int(c), "step": step, "draw": step - burnin})
        where = f"draw {step - burnin}" if step >= burnin else f"burn-in step {step}"
        fail.append(f"chain {c} diverged (non-finite loss at {where}); left out of λ̂")
    ok = finite.all(axis=1)
    d.chains_ok = int(ok.sum())
    llc = float(np.mean(llc_per_chain[ok])) if d.chains_ok else float("nan")
    if not math.isfinite(llc):
        fail.append("no finite λ̂: every chain diverged (lower lr or nbeta)")

    draws = loss[ok, burnin:]  # [ok chains, draws]
    if d.chains_ok:
        d.rhat, d.ess_bulk, d.ess_tail = _rhat_ess(draws)
        if d.rhat > RHAT_WARN:
            warn.append(f"split-R-hat {d.rhat:.3f} > {RHAT_WARN}: chains disagree (more draws or burn-in)")
        if d.ess_bulk < ESS_WARN:
            warn.append(f"effective sample size {d.ess_bulk:.0f} < {ESS_WARN:.0f} (more draws or chains)")

    if mala is not None and mala.size and d.chains_ok:
        keep = np.asarray(mala_step) >= burnin
        per_chain = mala[:, keep] if keep.any() else mala
        d.acceptance_per_chain = [float(v) for v in np.nanmean(per_chain, axis=1)]
        acc = float(np.nanmean(per_chain[ok])) if np.isfinite(per_chain[ok]).any() else float("nan")
        d.acceptance = acc
        if acc < ACCEPTANCE_WARN:
            warn.append(f"MALA acceptance {acc:.2f} < {ACCEPTANCE_WARN}: lr is too large for this nbeta")

    if math.isfinite(llc):
        if llc < 0:
            warn.append(f"negative λ̂ ({llc:.4g}): w* is not a local minimum of the loss, or lr is too large")
        se = float(np.std(llc_per_chain[ok], ddof=1) / math.sqrt(d.chains_ok)) if d.chains_ok > 1 else 0.0
        if llc - 3 * se > num_params / 2:  # significantly above: a correct estimate of λ = d/2 lands there half the time
            warn.append(f"λ̂ {llc:.4g} exceeds d/2 = {num_params / 2:g}, the bound on any learning coefficient")
        q = draws.shape[1] // 4
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
                warn.append(f"the trace still drifts: λ̂ moved {100 * d.drift:+.0f}% over the last half (more burn-in)")

    d.reasons = fail + warn
    d.verdict = "fail" if fail else "warn" if warn else "ok"
    return d
