"""Synthetic λ̂ and loss curves with known stage boundaries, for testing the transition detector.

λ̂(log10 t) = base + Σ_j a_j σ((log10 t − c_j) / w_j): logistic changes in log step, as developmental stages
look in Hoogland et al. 2024. A rise (a > 0) comes with a loss drop (type A); a fall (a < 0) with a loss
change of 1% of the run's drop (type B, hidden). The true boundary between two consecutive changes is the
middle of the flat stretch between their centres, where |dλ/dlog t| <= tol × the smaller of their peak slopes
(tol = TransitionConfig.plateau_tol): the top of a peak, the bottom of a trough, or the middle of a plateau.
The true spurts are the peaks of |dλ/dlog t| that fall below half their height on both sides before any steeper
point (TransitionConfig.spurt_drop = 0.5): the centre of a change, unless the next one runs into it. A curve
with a peak that just fails or passes that test, or a burst of less than 1 in λ (where the tails of two changes
meet), has spurts_ambiguous set: what its spurts are is moot.
Per-chain λ̂ = λ(t) (1 + rel · N(0, 1)), independent across chains and checkpoints.

results_file(path, curve) writes a curve as a results file, as a walk would, for the tests of the store's
transitions group and of the `transitions` / `plot` commands; rise_then_hidden_fall(folder) is one such file.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import find_peaks

from slt_probe import store


@dataclass
class Curve:
    step: np.ndarray  # [K]
    llc: np.ndarray  # [K] noise-free
    loss: np.ndarray  # [K]
    per_chain: np.ndarray  # [K, C]
    boundaries: list[int]  # true boundary checkpoint indices
    types: list[str]  # true stage types, len(boundaries) + 1 (the first stage runs from the start to the first boundary)
    spurts: list[tuple[int, int]] = None  # true spurts: (checkpoint index, sign of the change)
    spurts_ambiguous: bool = False  # a peak of the slope dips to about spurt_drop: whether it is a spurt is moot


class Ambiguous(ValueError):
    """Two changes whose slopes dip to about plateau_tol between them: whether that is a boundary is a matter
    of definition, not of detection, so such curves are not used as ground truth."""


def logistic(u):
    return 1.0 / (1.0 + np.exp(-u))


def make_curve(changes, rng, *, rel=0.08, chains=4, k=60, lo=1.0, hi=5.0, base=5.0, total_loss_drop=2.5, tol=0.2,
               step=None):
    """changes: [(centre log10 step, amplitude, width)], in order. step: the checkpoint steps (positive), instead
    of k log-spaced ones from 10^lo to 10^hi."""
    if step is None:
        step = np.unique(np.round(np.logspace(lo, hi, k)).astype(np.int64))
    step = np.asarray(step, dtype=np.int64)
    x = np.log10(step)
    lo, hi = x[0], x[-1]
    grid = np.linspace(lo, hi, 20001)

    def lam(z):
        return base + sum(a * logistic((z - c) / w) for c, a, w in changes)

    def dlam(z):
        return sum(a / w * logistic((z - c) / w) * (1 - logistic((z - c) / w)) for c, a, w in changes)

    rises = [a for _, a, _ in changes if a > 0]
    drops = [total_loss_drop * a / sum(rises) if a > 0 else 0.01 * total_loss_drop for _, a, _ in changes]
    loss = 4.0 - sum(dl * logistic((x - c) / w) for (c, _, w), dl in zip(changes, drops))

    bounds, types, net = [], [], changes[0][1]
    for (c1, _, _), (c2, a2, _) in zip(changes[:-1], changes[1:]):
        between = grid[(grid > c1) & (grid < c2)]
        steep = min(abs(dlam(np.array([c1]))[0]), abs(dlam(np.array([c2]))[0]))
        valley = np.abs(dlam(between)).min() / steep
        if tol / 2 < valley < 2 * tol:
            raise Ambiguous(f"the slope between the changes at {c1:.2f} and {c2:.2f} dips to {valley:.2f} of theirs")
        flat = between[np.abs(dlam(between)) <= tol * steep]
        if flat.size == 0:  # the tail of one change runs into the next: one stage, no boundary between them
            net += a2
            continue
        bounds.append(int(np.argmin(np.abs(x - (flat.min() + flat.max()) / 2))))
        types.append("A" if net > 0 else "B")
        net = a2
    types.append("A" if net > 0 else "B")
    slope = dlam(grid)
    peaks, props = find_peaks(np.abs(slope), prominence=0.0)
    ratio = props["prominences"] / np.abs(slope[peaks])  # a spurt: >= 1 - spurt_drop = 0.5
    spurts = [(int(np.argmin(np.abs(x - grid[g]))), int(np.sign(slope[g]))) for g, r in zip(peaks, ratio) if r >= 0.5]
    ambiguous = bool(np.any((ratio > 0.35) & (ratio < 0.65)))
    for g, r in zip(peaks, ratio):  # a burst of less than 1 in λ: a tail where two changes meet, moot as a spurt
        if r >= 0.5:
            below = np.abs(slope) < 0.5 * abs(slope[g])  # the window: out to where the slope halves
            right = grid[(grid >= grid[g]) & below].min(initial=grid[-1])
            left = grid[(grid <= grid[g]) & below].max(initial=grid[0])
            ambiguous |= bool(abs(lam(np.array([right]))[0] - lam(np.array([left]))[0]) < 1.0)
    llc = lam(x)
    per_chain = llc[:, None] * (1 + rel * rng.standard_normal((len(x), chains)))
    return Curve(step, llc, loss, per_chain, bounds, types, spurts, ambiguous)


def random_curve(rng, n_changes, **kw) -> Curve:
    """A random curve with 1-3 changes whose ground truth is unambiguous."""
    while True:
        try:
            return make_curve(random_changes(rng, n_changes), rng, **kw)
        except Ambiguous:
            continue


def dense_steps(last=50_000, every=100, early=5):
    """A dense linear grid (every `every` steps to `last`) beside `early` log-spaced checkpoints below `every`, as
    many published runs save them: on a log axis most checkpoints crowd into the last decade."""
    head = np.round(np.logspace(1, np.log10(every), early, endpoint=False)).astype(np.int64)
    return np.unique(np.concatenate([head, np.arange(every, last + 1, every)]))


def random_dense_curve(rng, n_changes, **kw) -> Curve:
    """A random curve on dense_steps() with 1-3 changes 0.4-0.8 decades apart in 2.7..4.6 (where the linear grid
    resolves them: at step 500 its spacing is 0.08 decades), widths 0.03-0.08 decades."""
    step = kw.pop("step", None)
    step = dense_steps() if step is None else step
    while True:
        centres = 2.7 + np.cumsum(rng.uniform(0.4, 0.8, n_changes)) - 0.4
        centres += rng.uniform(0, max(0.0, 4.6 - centres[-1]))
        changes, level = [], 0.0
        for c in centres:
            a = rng.uniform(8, 30)
            if level > 12 and rng.random() < 0.5:
                a = -rng.uniform(0.3, 0.7) * level
            level += a
            changes.append((float(c), float(a), float(rng.uniform(0.03, 0.08))))
        try:
            return make_curve(changes, rng, step=step, **kw)
        except Ambiguous:
            continue


def random_changes(rng, n):
    """n changes 1-1.4 decades apart in 1.3..4.7, amplitudes 8-30 (a fall never takes λ below its start)."""
    centres = 1.5 + np.cumsum(rng.uniform(1.0, 1.4, n)) - 1.0
    centres += rng.uniform(0, max(0.0, 4.5 - centres[-1]))
    changes, level = [], 0.0
    for c in centres:
        a = rng.uniform(8, 30)
        if level > 12 and rng.random() < 0.5:
            a = -rng.uniform(0.3, 0.7) * level
        level += a
        changes.append((float(c), float(a), float(rng.uniform(0.08, 0.15))))
    return changes


def results_file(path, c):
    rows = []
    for i, s in enumerate(c.step):
        row = store.empty_row(c.per_chain.shape[1], 3, 0)
        row.update(step=int(s), path=f"step_{s}.pt", status="ok", init_loss=float(c.loss[i]),
                   llc_mean=float(c.per_chain[i].mean()), llc_std=float(c.per_chain[i].std(ddof=1)),
                   llc_se=float(c.per_chain[i].std(ddof=1) / 2), llc_per_chain=c.per_chain[i], verdict="ok")
        rows.append(row)
    attrs = {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION, "engine": "slt",
             "config_resolved": {"lr": 1e-4, "nbeta": 30.0, "localization": 100.0, "chains": 4, "draws": 3}}
    store.write(path, attrs, rows, c.per_chain.shape[1], 3, 0)


def rise_then_hidden_fall(folder: Path, rel: float = 0.05) -> tuple[Path, Curve]:
    """A results file folder/r.h5 whose λ̂ rises (loss falls) and then falls under a flat loss; and its curve."""
    c = make_curve([(2.0, 25.0, 0.1), (3.5, -12.0, 0.1)], np.random.default_rng(7), rel=rel)
    results_file(folder / "r.h5", c)
    return folder / "r.h5", c
