"""Developmental stages from a λ̂ curve: where they change, of what type, and how sure we are.

Following Hoogland et al. 2024 (arXiv 2402.02364): smooth λ̂ against log step, differentiate, and place
stage boundaries at the critical points of λ̂, where dλ̂/dlog t crosses zero (a peak or a trough) or
nearly vanishes between two changes (a plateau). Each stage between boundaries is typed:
  A      λ̂ rises while the loss falls (the model gains structure that pays for itself);
  B      λ̂ falls while the loss barely moves or falls slightly (it simplifies);
  other  anything else (λ̂ unchanged within noise, or moving with a rising loss).
A stage is hidden when its change in λ̂ is significant (>= k_se standard errors) while its loss change is
small (< hidden_loss_frac of the run's total loss drop): the loss curve would not show it.

Smoothing: a cubic smoothing spline of λ̂ against log10(step) weighted by 1/s.e.², with the smoothing
condition sum(((y - f) / se)^2) <= s set to s = n, the expected chi-square of the residuals when the
weights are the inverse standard deviations (FITPACK's documented choice, Dierckx 1993); so the noise
level, not a tuned constant, decides how smooth. The choice is checked at both ends of FITPACK's range
s = n ± sqrt(2n) and the result reports whether the boundaries move. Checkpoints closer than `resolution`
(0.05 decades) share their weight, so a densely sampled stretch is smoothed as one sampled every 0.05 decades
and the boundaries do not depend on how densely a stretch was sampled (`weights`).
Noise: the s.e. decides both the smoothing and every significance test, so where it comes from is reported
(Transitions.noise). From the chains when they are given; a stated s.e. is checked against the curve's own
scatter (difference-based, Gasser, Sroka & Jennen-Steinmetz 1986) and replaced by that scale when the two
disagree by more than se_factor (a "std" column of spread over draws passed as the s.e.); with neither, the
noise is estimated from the scatter alone (`noise_scale`).
Spurts: inside a stage, λ̂ often changes in a burst: the previous-token and induction heads form where λ̂ rises
fastest, halfway up the stage's rise, not at its ends. A spurt is a peak of |dλ̂/dlog t| that stands out (the
slope falls below spurt_drop of its peak on both sides before any steeper point) and whose change across that
window is significant (>= k_se s.e.), as is the peak's height above its base (>= spurt_k_se s.e.): the λ̂
counterpart of a behavioural score rising through half its final value. Spurts are typed like stages, over
their window.
Confidence: the detection is repeated on bootstrap resamples of the chains at every checkpoint (or of
N(mean, s.e.) when only means and standard errors are at hand); a boundary's (spurt's) confidence is the
fraction of resamples with a boundary (a spurt of the same sign) within ±1 checkpoint or ±resolution decades
of it. Below min_confidence it is reported tentative.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
from scipy.interpolate import BSpline, make_smoothing_spline
from scipy.ndimage import uniform_filter1d
from scipy.optimize import brentq
from scipy.signal import find_peaks

# the records the detector fills are defined with the schema that stores them
from slt_probe.store.transitions import Boundary, Spurt, Stage, TransitionConfig, Transitions

__all__ = ["detect_transitions", "TransitionConfig", "Transitions", "Boundary", "Stage", "Spurt"]


# ----------------------------------------------------------------------------------------------------------
# the pieces


def log_steps(step: np.ndarray) -> np.ndarray:
    """log10(step), with step 0 placed at half the smallest positive step (log 0 is not a place)."""
    step = np.asarray(step, dtype=np.float64)
    positive = step[step > 0]
    floor = positive.min() / 2 if positive.size else 0.5
    return np.log10(np.maximum(step, floor))


def pooled_se(se: np.ndarray) -> np.ndarray:
    """Per-checkpoint s.e. pooled over 5 neighbours (a running mean of the variances, which keeps them unbiased).

    A s.e. from 4 chains has 3 degrees of freedom: weights 1/s.e.² from it alone would let a few lucky
    checkpoints pin the curve, and a running median would understate the noise by ~20% (the median of
    chi²₃/3 is 0.79), making the smoothing chase it.
    """
    se = np.asarray(se, dtype=np.float64)
    good = np.isfinite(se) & (se > 0)
    if not good.any():
        return se
    var = np.where(good, se, np.sqrt(np.mean(se[good] ** 2))) ** 2
    return np.sqrt(uniform_filter1d(var, size=min(5, len(se)), mode="nearest"))


def weights(x: np.ndarray, se: np.ndarray, resolution: float) -> np.ndarray:
    """[K] the smoothing weights: 1/s.e.², shared out among checkpoints closer than `resolution` in log step.

    A checkpoint stands for the stretch of log step around it (half the gaps to its neighbours; an end point its
    one gap); where that stretch is shorter than `resolution`, its weight shrinks in proportion. Then a dense
    stretch (every 100 steps to 50k crowds 400 checkpoints into the last decade on a log axis) weighs, per decade,
    what a stretch sampled every `resolution` decades weighs, and the fit's resolution does not depend on how
    densely a stretch was sampled: with weights 1/s.e.² alone, the discrepancy principle let the fit follow the
    noise of the dense stretch (on the dense synthetic grids of benchmarks/transitions_noise.py: boundary precision
    0.58, recall 0.72, 0.125 confident false boundaries per control curve; shared out: 0.94, 0.98, 0.025).
    Checkpoints at least `resolution` apart (60 log-spaced over 4 decades) keep weight 1/s.e.².
    """
    gap = np.diff(x)
    stretch = np.r_[gap[0], (gap[:-1] + gap[1:]) / 2, gap[-1]]
    return np.minimum(stretch / resolution, 1.0) / se**2


def smoothing_lam(x: np.ndarray, y: np.ndarray, se: np.ndarray, resolution: float, s_factor: float = 0.0) -> float:
    """The smoothing penalty at which the weighted residual chi-square sum(w (y - f)^2) equals its expectation for
    the true curve, n = sum(w se²), plus s_factor times its sd, sqrt(2 sum((w se²)²)) (weights: `weights`).

    With weights that are inverse variances the residual chi-square of the true curve has mean n and sd
    sqrt(2n): the discrepancy principle (Morozov 1966; FITPACK's documented choice of s, Dierckx 1993) asks
    the fit to explain the data down to the noise and no further, so the noise decides the smoothness.
    (Minimising the unbiased risk, UBRE, fitted the noise: it found 2-3x more spurious boundaries on the
    synthetic curves of tests/helpers/curves.py.) The chi-square grows with the penalty: a bracketing root-finder.
    """
    w = weights(x, se, resolution)
    share = w * se**2  # [K] 1, or less where checkpoints crowd closer than the resolution
    target = max(share.sum() + s_factor * math.sqrt(2 * np.sum(share**2)), 1.0)

    def excess(log_lam: float) -> float:
        f = make_smoothing_spline(x, y, w, lam=10.0**log_lam)
        return float(np.sum(w * (y - f(x)) ** 2) - target)

    lo, hi = -12.0, 8.0
    if excess(lo) >= 0:  # even an interpolating spline misses by more than the noise: least smoothing
        return 10.0**lo
    if excess(hi) <= 0:  # a straight line fits within the noise: most smoothing
        return 10.0**hi
    return 10.0 ** brentq(excess, lo, hi, xtol=1e-3)


def smooth(x: np.ndarray, y: np.ndarray, se: np.ndarray, lam: float, resolution: float):
    """Cubic smoothing spline (Reinsch): minimise sum(w (y - f)^2) + lam ∫ f''² over x (w: `weights`)."""
    return make_smoothing_spline(x, y, weights(x, se, resolution), lam=lam)


def _stage_change(i0, i1, y_at, se, loss):
    dllc = y_at[i1] - y_at[i0]
    dse = math.hypot(se[i0], se[i1])
    dloss = loss[i1] - loss[i0] if loss is not None else float("nan")
    return dllc, dse, dloss


def _nearest(x: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(x - value)))


def _flat_stretch(d: np.ndarray, g: int, limit: float) -> tuple[int, int]:
    """The contiguous grid range around g where |dλ̂| <= limit."""
    lo = hi = g
    while lo > 0 and abs(d[lo - 1]) <= limit:
        lo -= 1
    while hi < len(d) - 1 and abs(d[hi + 1]) <= limit:
        hi += 1
    return lo, hi


def _detect(x, y, se, cfg: TransitionConfig, lam: float, spline=None):
    """Boundaries [(checkpoint index, grid index, kind)] and the smoothed curve, for one data set (or its
    spline, when already fitted).

    Start from every point where the smoothed slope vanishes or has a local minimum, then repeat until
    nothing changes: merge the stage whose change is least significant (< k_se s.e.) into a neighbour by
    dropping its less flat boundary; drop a boundary that is not flat relative to the stages on either side
    (|slope| > plateau_tol × the smaller of their steepest slopes: two halves of one change); move each
    boundary to the middle of its flat stretch (|slope| <= plateau_tol × those slopes).
    """
    spline = smooth(x, y, se, lam, cfg.resolution) if spline is None else spline
    grid = np.linspace(x[0], x[-1], cfg.grid)
    d = spline.derivative()(grid)
    y_at = spline(x)
    a = np.abs(d)

    inner = np.arange(1, len(d) - 1)
    minima = inner[(a[inner] <= a[inner - 1]) & (a[inner] < a[inner + 1])]
    crossings = np.nonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0)[0]
    by_checkpoint: dict[int, int] = {}  # one candidate per checkpoint: the flattest grid point
    for g in sorted(set(minima.tolist()) | set(crossings.tolist())):
        i = _nearest(x, grid[g])
        if 0 < i < len(x) - 1 and (i not in by_checkpoint or a[g] < a[by_checkpoint[i]]):
            by_checkpoint[i] = g
    bounds = sorted(by_checkpoint.items())  # [(checkpoint index, grid index)]
    kinds: dict[int, str] = {}

    while True:
        ends = [0, *[b[0] for b in bounds], len(x) - 1]
        z = []
        for i0, i1 in zip(ends[:-1], ends[1:]):
            dllc, dse, _ = _stage_change(i0, i1, y_at, se, None)
            z.append(abs(dllc) / max(dse, 1e-300))
        if bounds and min(z) < cfg.k_se:
            w = int(np.argmin(z))  # stage w lies between bounds[w - 1] and bounds[w]
            options = [j for j in (w - 1, w) if 0 <= j < len(bounds)]
            bounds.pop(max(options, key=lambda j: a[bounds[j][1]]))
            continue
        # flatness relative to the neighbouring stages, and relocation within the flat stretch
        gends = [0, *[b[1] for b in bounds], len(d) - 1]
        worst, worst_ratio, moved = None, 1.0, []
        for j, (i, g) in enumerate(bounds):
            steep = min(a[gends[j] : g + 1].max(), a[g : gends[j + 2] + 1].max())
            ratio = a[g] / steep if steep > 0 else 1.0
            if ratio > cfg.plateau_tol:
                if worst is None or ratio > worst_ratio:
                    worst, worst_ratio = j, ratio
                continue
            lo, hi = _flat_stretch(d, g, cfg.plateau_tol * steep)
            left, right = d[max(lo - 1, 0)], d[min(hi + 1, len(d) - 1)]
            # the middle of the flat stretch: on a broad top or plateau, where noise puts the extremum is arbitrary
            kind = "peak" if left > 0 > right else "trough" if left < 0 < right else "plateau"
            g2 = (lo + hi) // 2
            moved.append((_nearest(x, grid[g2]), g2, kind))
        if worst is not None:
            bounds.pop(worst)
            continue
        # relocated boundaries may now share a checkpoint or sit on the run's edge: keep one, and check again
        clean = []
        for i, g, kind in moved:
            if 0 < i < len(x) - 1 and all(i != c[0] for c in clean):
                clean.append((i, g, kind))
        if [(i, g) for i, g, _ in clean] == bounds:
            kinds = {g: kind for _, g, kind in clean}
            break
        bounds = [(i, g) for i, g, _ in clean]
    return [(i, g, kinds[g]) for i, g in bounds], spline, grid, d, y_at


def slope_basis(x: np.ndarray, se: np.ndarray, lam: float, resolution: float, grid: np.ndarray) -> np.ndarray:
    """[G, K]: column k is the smoothed slope on the grid of a unit impulse at checkpoint k.

    The smoothing spline is linear in the data at a fixed lam, so the slope is basis @ y and its covariance
    basis diag(se²) basisᵀ: how sure a peak of the slope is, in standard errors.
    """
    return smooth(x, np.eye(len(x)), se, lam, resolution).derivative()(grid)  # all K impulses in one fit


def _spurts(x, grid, d, spline, se, basis, cfg: TransitionConfig):
    """Spurts [(checkpoint index, grid index, window start grid index, window end grid index)] of one fit.

    A peak of |dλ̂/dlog t| whose prominence is at least (1 - spurt_drop) of its height falls below spurt_drop of
    its height on both sides before any steeper point: its window (|slope| >= spurt_drop × peak) lies inside
    the run and holds no steeper point. Two tests of significance: the change of λ̂ across the window (>= k_se
    s.e.: a real change), and the peak's prominence over the higher of its two bases (>= spurt_k_se s.e.: a
    real burst, not a wiggle of the smoothed slope on a steady climb).
    """
    a = np.abs(d)
    peaks, props = find_peaks(a, prominence=0.0)
    out: dict[int, tuple] = {}  # one spurt per checkpoint: the steepest
    for g, prominence, lb, rb in zip(peaks, props["prominences"], props["left_bases"], props["right_bases"]):
        if prominence < (1 - cfg.spurt_drop) * a[g]:
            continue
        base = lb if a[lb] >= a[rb] else rb  # the base that sets the prominence
        contrast = np.sign(d[g]) * basis[g] - np.sign(d[base]) * basis[base]  # a[g] - a[base] = contrast @ y
        if prominence < cfg.spurt_k_se * math.sqrt(np.sum((contrast * se) ** 2)):
            continue
        lo = hi = g  # the window: where |slope| >= spurt_drop × the peak's
        while lo > 0 and a[lo - 1] >= cfg.spurt_drop * a[g]:
            lo -= 1
        while hi < len(a) - 1 and a[hi + 1] >= cfg.spurt_drop * a[g]:
            hi += 1
        i0, i1 = _nearest(x, grid[lo]), _nearest(x, grid[hi])
        if abs(spline(grid[hi]) - spline(grid[lo])) < cfg.k_se * math.hypot(se[i0], se[i1]):
            continue
        i = _nearest(x, grid[g])
        if i not in out or a[g] > a[out[i][1]]:
            out[i] = (i, int(g), int(lo), int(hi))
    return [out[i] for i in sorted(out)]


def _type(dllc, dse, dloss, total_drop, cfg: TransitionConfig) -> tuple[str, bool]:
    """(A | B | other, hidden) for a change of λ̂ and of the loss (see the module docstring)."""
    significant = abs(dllc) >= cfg.k_se * dse
    quiet = math.isfinite(dloss) and total_drop > 0 and abs(dloss) < cfg.hidden_loss_frac * total_drop
    if significant and dllc > 0 and math.isfinite(dloss) and dloss < 0:
        kind = "A"
    elif significant and dllc < 0 and math.isfinite(dloss) and dloss <= cfg.hidden_loss_frac * max(total_drop, 0):
        kind = "B"
    else:
        kind = "other"
    return kind, bool(significant and quiet)


def _resample(rng, y, se, per_chain):
    if per_chain is None:
        return y + se * rng.standard_normal(len(y))
    out = np.empty(len(y))
    for i, row in enumerate(per_chain):
        ok = row[np.isfinite(row)]
        out[i] = rng.choice(ok, size=len(ok), replace=True).mean() if ok.size else y[i]
    return out


# ----------------------------------------------------------------------------------------------------------
# noise: the scale that decides what is significant, and how it was obtained

CHI2_1_MEDIAN = 0.4549364231195724  # median of chi-square(1): median(z²) / CHI2_1_MEDIAN estimates var(z) robustly
LOG_CHI2_1_MEAN = -1.2703628454614782  # E[log chi-square(1)] = -(γ_Euler + log 2)


def pseudo_residuals(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[K-2] each interior point's deviation from the line through its two neighbours, and the weights a, b.

    Gasser, Sroka & Jennen-Steinmetz 1986 (Biometrika 73:625): e_i = a_i y_{i-1} + b_i y_{i+1} - y_i with
    a_i, b_i the linear-interpolation weights for uneven spacing. Where the curve is locally linear the signal
    cancels and var(e_i) = a_i² σ²_{i-1} + b_i² σ²_{i+1} + σ²_i: the noise, read off the curve itself.
    """
    h = np.diff(x)
    a, b = h[1:] / (h[:-1] + h[1:]), h[:-1] / (h[:-1] + h[1:])
    return a * y[:-2] + b * y[2:] - y[1:-1], a, b


def scatter_ratio(x: np.ndarray, y: np.ndarray, se: np.ndarray) -> float:
    """The curve's own scatter in units of a stated s.e. (1 when the s.e. is right), robustly.

    The median of the squared standardized pseudo-residuals, not their mean: at a sharp change the signal
    does not cancel between neighbours, and a few such points must not pass for noise.
    """
    e, a, b = pseudo_residuals(x, y)
    e2 = np.maximum(e**2, quantum(y) ** 2 / 12 * (a**2 + b**2 + 1))  # rounded values: see curve_se
    z2 = e2 / (a**2 * se[:-2] ** 2 + b**2 * se[2:] ** 2 + se[1:-1] ** 2)
    return float(math.sqrt(np.median(z2) / CHI2_1_MEDIAN))


def quantum(y: np.ndarray) -> float:
    """The step the values were rounded to (0.1 for a table of λ̂ to one decimal), or 0 when they were not."""
    gaps = np.diff(np.unique(y))
    if gaps.size == 0:
        return 0.0
    q = float(gaps.min())
    on_grid = np.abs(y / q - np.round(y / q)) < 1e-3
    return q if q > 1e-9 * np.abs(y).max() and on_grid.all() else 0.0


def curve_se(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[K] the noise of each point, estimated from the curve alone (no s.e. given).

    λ̂'s noise grows with λ̂, so one scale for the whole curve will not do: average log e_i² over a running window
    of 30% of the points (at least 21) and undo the log's bias, E[log chi-square(1)] (variance-function
    estimation on log squared residuals, Yu & Jones 2004). The log keeps a few inflated pseudo-residuals at sharp
    changes from dominating; the wide window keeps the estimate within ~15% where the noise changes slowly.
    Values rounded to a step q carry at least its rounding noise, q²/12 (Sheppard's correction).
    """
    e, a, b = pseudo_residuals(x, y)
    e2 = e**2 / (a**2 + b**2 + 1)
    step = quantum(y)
    if step > 0:  # rounded values (a published table): a residual that rounds to 0 is below the rounding, not 0
        e2 = np.maximum(e2, step**2 / 12)
    if not (e2 > 0).any():
        raise ValueError("the curve has no scatter to estimate its noise from (a straight line?): give its s.e.")
    log_e2 = np.log(np.maximum(e2, e2[e2 > 0].min()))
    half = max(10, int(0.15 * len(x)))
    i = np.arange(len(log_e2))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(log_e2))  # the window, cut short at the ends
    total = np.r_[0.0, np.cumsum(log_e2)]
    v = np.exp((total[hi] - total[lo]) / (hi - lo) - LOG_CHI2_1_MEAN)
    return np.sqrt(np.r_[v[0], v, v[-1]])  # the two end points take their neighbours' scale


def noise_scale(x, y, given, source: str, cfg: TransitionConfig) -> tuple[np.ndarray, dict, Optional[str]]:
    """The per-checkpoint s.e. the detection uses, a record of how it was obtained, and a note for the user.

    given None: the curve's own scatter (curve_se). A stated s.e. (source "stated") is checked against that
    scatter: when it is off by more than cfg.se_factor either way (a "std" column that is the spread of λ̂ over
    draws, not the s.e. of their mean), the stated s.e. is rescaled to the scatter, keeping its shape across the
    curve, unless cfg.trust_se. An s.e. from the chains themselves (source "chains") is used as it is: chains
    that share their minibatches and noise across checkpoints scatter less from one checkpoint to the next than
    their s.e. says, and a detection that trusts the chains' s.e. stays on the careful side.
    """
    if given is None:
        se = curve_se(x, y)
        method = "difference-based, Gasser-Sroka-Jennen-Steinmetz 1986 pseudo-residuals, log-averaged over a " \
                 "running window of 30% of the checkpoints"
        return se, {"source": "curve", "method": method, "median_se": float(np.median(se))}, \
            f"no s.e. given: the noise was estimated from the curve's own scatter (median s.e. {np.median(se):.3g})"
    se = pooled_se(given)
    if not np.all(np.isfinite(se) & (se > 0)):
        raise ValueError("the standard errors are zero or missing (one chain?): significance cannot be judged")
    ratio = scatter_ratio(x, y, se)
    off = ratio > 0 and not (1 / cfg.se_factor <= ratio <= cfg.se_factor)  # 0: no scatter to judge by
    noise = {"source": source, "scatter_ratio": ratio, "se_factor": cfg.se_factor, "agrees": ratio > 0 and not off,
             "rescaled": False, "median_se": float(np.median(se))}
    what = "stated s.e." if source == "stated" else "chains' s.e."
    if ratio == 0:
        return se, noise, f"the curve has no scatter to check the {what} against: used as given"
    if not off:
        return se, noise, None
    if source == "stated" and not cfg.trust_se:
        noise.update(rescaled=True, median_se=float(np.median(se * ratio)))
        return se * ratio, noise, (f"the {what} disagrees with the curve's own scatter (scatter = {ratio:.3g} × s.e.): "
                                   f"using the scatter's scale, s.e. × {ratio:.3g} (trust_se / --trust-se to keep it)")
    return se, noise, f"the {what} disagrees with the curve's own scatter (scatter = {ratio:.3g} × s.e.); used as given"


# ----------------------------------------------------------------------------------------------------------
# the detector


def detect_transitions(
    step,
    llc_mean,
    llc_se=None,
    loss=None,
    *,
    llc_per_chain=None,
    config: Optional[TransitionConfig] = None,
) -> Transitions:
    """Stage boundaries and types from a λ̂ curve.

    step, llc_mean [K]: one value per checkpoint (any order; NaN rows, e.g. failed checkpoints, are left out).
    llc_se [K]: standard errors (e.g. read off a published curve), checked against the curve's own scatter;
        derived from llc_per_chain when not given; with neither, the noise is estimated from the curve itself.
    loss [K]: the loss at each checkpoint (init_loss), for types and the hidden flag.
    llc_per_chain [K, C]: per-chain λ̂; the confidence bootstrap resamples chains when it is given.
    Boundary and stage indices refer to rows of the input arrays.
    """
    cfg = config or TransitionConfig()
    notes = []
    step = np.asarray(step, dtype=np.int64)
    y = np.asarray(llc_mean, dtype=np.float64)
    per_chain = None if llc_per_chain is None else np.asarray(llc_per_chain, dtype=np.float64)
    stated = llc_se
    if llc_se is None and per_chain is not None:
        n_ok = np.isfinite(per_chain).sum(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the rows of failed checkpoints are all NaN
            llc_se = np.nanstd(per_chain, axis=1, ddof=1) / np.sqrt(np.maximum(n_ok, 1))
    ok = np.isfinite(y) & (step >= 0)
    rows = np.nonzero(ok)[0][np.argsort(step[ok], kind="stable")]  # input rows in step order
    empty = Transitions([], [], cfg, {}, np.zeros(0), np.zeros(0), np.zeros(0), notes)
    if len(rows) < 5:
        notes.append(f"{len(rows)} usable checkpoints: at least 5 are needed to find transitions")
        return empty

    if len(np.unique(step[rows])) < len(rows):
        raise ValueError("a step appears twice: one λ̂ per checkpoint step is needed")
    x, y = log_steps(step[rows]), y[rows]
    given = None if llc_se is None else np.asarray(llc_se, dtype=np.float64)[rows]
    se, noise, note = noise_scale(x, y, given, "chains" if per_chain is not None and stated is None else "stated", cfg)
    notes += [note] if note else []
    loss_r = None if loss is None else np.asarray(loss, dtype=np.float64)[rows]
    pc = None if per_chain is None else per_chain[rows]

    lam = smoothing_lam(x, y, se, cfg.resolution)
    kept, spline, grid, d, y_at = _detect(x, y, se, cfg, lam)

    # stability of the smoothing choice: the ends of the residual chi-square's range, n ± sqrt(2n)
    idx = [k[0] for k in kept]
    lams = {name: smoothing_lam(x, y, se, cfg.resolution, factor) for name, factor in (("low", -1.0), ("high", 1.0))}
    alt = {name: [k[0] for k in _detect(x, y, se, cfg, value)[0]] for name, value in lams.items()}
    same = all(len(a) == len(idx) and all(abs(i - j) <= 1 for i, j in zip(a, idx)) for a in alt.values())
    share = weights(x, se, cfg.resolution) * se**2  # n below: the checkpoints' count, crowded ones counted in part
    n, sd = float(share.sum()), math.sqrt(2 * np.sum(share**2))
    smoothing = {"method": "cubic smoothing spline of λ̂ on log10 step, weights 1/s.e.² (shared where checkpoints "
                           f"are closer than {cfg.resolution:g} decades), residual chi-square = n",
                 "lam": lam, "lam_range": [lams["low"], lams["high"]], "chi_square": n,
                 "chi_square_range": [n - sd, n + sd],
                 "boundaries_at_chi_square_low": [int(step[rows][i]) for i in alt["low"]],
                 "boundaries_at_chi_square_high": [int(step[rows][i]) for i in alt["high"]], "stable": bool(same)}
    if not same:
        notes.append("the boundaries move within the smoothing range (residual chi-square n ± sqrt(2n)): "
                     "treat them with care")

    basis = slope_basis(x, se, lam, cfg.resolution, grid)
    spurts = _spurts(x, grid, d, spline, se, basis, cfg)
    sign = [np.sign(d[g]) for _, g, _, _ in spurts]

    # confidence: how often a resample puts a boundary (a spurt of the same sign) within ±1 checkpoint

    def near(i: int, j: int) -> bool:  # on a dense grid ±1 checkpoint is no tolerance at all
        return abs(i - j) <= 1 or abs(x[i] - x[j]) <= cfg.resolution

    rng = np.random.default_rng(cfg.seed)
    hits, spurt_hits = np.zeros(len(kept)), np.zeros(len(spurts))
    resampled = np.stack([y] + [_resample(rng, y, se, pc) for _ in range(cfg.resamples)], axis=1)[:, 1:]  # [K, R]
    fits = smooth(x, resampled, se, lam, cfg.resolution) if cfg.resamples else None  # the same smoothing, one fit
    for r in range(cfg.resamples):
        one = BSpline(fits.t, fits.c[:, r], fits.k)
        b, sp, gr, dd, _ = _detect(x, resampled[:, r], se, cfg, lam, spline=one)
        found = [k[0] for k in b]
        hits += [any(near(f, k[0]) for f in found) for k in kept]
        found = [(i, np.sign(dd[g])) for i, g, _, _ in _spurts(x, gr, dd, sp, se, basis, cfg)]
        spurt_hits += [any(near(f, k[0]) and sg == s for f, sg in found) for k, s in zip(spurts, sign)]
    confidence = hits / cfg.resamples if cfg.resamples else np.full(len(kept), np.nan)
    spurt_conf = spurt_hits / cfg.resamples if cfg.resamples else np.full(len(spurts), np.nan)

    # stages and their types
    total_drop = float("nan")
    if loss_r is not None and np.isfinite(loss_r).any():
        low = np.nanmin(loss_r)
        total_drop = float(loss_r[0] - low) if loss_r[0] > low else float(np.nanmax(loss_r) - low)
    ends = [0, *[k[0] for k in kept], len(x) - 1]
    stages = []
    for a, b in zip(ends[:-1], ends[1:]):
        dllc, dse, dloss = _stage_change(a, b, y_at, se, loss_r)
        kind, hidden = _type(dllc, dse, dloss, total_drop, cfg)
        stages.append(Stage(int(step[rows][a]), int(step[rows][b]), int(rows[a]), int(rows[b]), float(dllc),
                            float(dse), float(dloss), kind, hidden))
    boundaries = []
    for j, (i, g, kind) in enumerate(kept):
        conf = float(confidence[j])
        boundaries.append(Boundary(int(step[rows][i]), int(rows[i]), float(grid[g]), kind, conf,
                                   bool(not conf >= cfg.min_confidence), stages[j].hidden or stages[j + 1].hidden))
    found = []
    for j, (i, g, lo, hi) in enumerate(spurts):
        i0, i1 = _nearest(x, grid[lo]), _nearest(x, grid[hi])
        dllc = float(spline(grid[hi]) - spline(grid[lo]))  # across the window itself, not its nearest checkpoints
        _, dse, dloss = _stage_change(i0, i1, y_at, se, loss_r)
        kind, hidden = _type(dllc, dse, dloss, total_drop, cfg)
        conf = float(spurt_conf[j])
        found.append(Spurt(int(step[rows][i]), int(rows[i]), float(grid[g]), float(d[g]), int(step[rows][i0]),
                           int(step[rows][i1]), dllc, float(dse), float(dloss), kind, hidden, conf,
                           bool(not conf >= cfg.min_confidence)))
    return Transitions(boundaries, stages, cfg, smoothing, grid, spline(grid), d, notes, found, noise)
