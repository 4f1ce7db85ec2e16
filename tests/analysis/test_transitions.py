"""The transition detector (slt_probe/analysis/transitions.py) on synthetic λ̂ / loss curves with known stage
boundaries and spurts (tests/helpers/curves.py), and on controls without transitions.

Noise: per-chain λ̂ with a relative spread of 5% (4 chains: s.e. 2.5% of λ̂). The figures at other noise
levels are in docs/validation.md ("Stage and spurt detection"); they are measured by the same code with another
`rel`. How the stages are stored is tested in tests/store/test_store_transitions.py, the `transitions` command
in tests/test_cli.py.
"""

import numpy as np
import pytest
from curves import make_curve, random_curve

from slt_probe.analysis.transitions import TransitionConfig, detect_transitions

REL = 0.05
CFG = TransitionConfig(resamples=100)


def detect(c, **kw):
    return detect_transitions(c.step, c.per_chain.mean(1), loss=c.loss, llc_per_chain=c.per_chain,
                              config=kw.pop("config", CFG), **kw)


def matches(found, true):
    """(true boundaries found within ±1 checkpoint, found boundaries matching no true one)."""
    hit = sum(any(abs(f - b) <= 1 for f in found) for b in true)
    false = sum(not any(abs(f - b) <= 1 for b in true) for f in found)
    return hit, false


def test_synthetic_curves_precision_recall_location_and_types():
    tp = fp = fn = tp_conf = 0
    typed = typed_ok = 0
    for i in range(40):
        rng = np.random.default_rng(1000 + i)
        c = random_curve(rng, int(rng.integers(1, 4)), rel=REL)
        t = detect(c)
        hit, false = matches([b.index for b in t.boundaries], c.boundaries)
        tp, fp, fn = tp + hit, fp + false, fn + len(c.boundaries) - hit
        tp_conf += matches([b.index for b in t.boundaries if not b.tentative], c.boundaries)[0]
        if hit == len(c.boundaries) == len(t.boundaries):
            typed += len(c.types)
            typed_ok += sum(s.type == ty for s, ty in zip(t.stages, c.types))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"\nprecision {precision:.3f} recall {recall:.3f} (confident only: recall {tp_conf / (tp + fn):.3f}); "
          f"types {typed_ok}/{typed}")
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert typed >= 60 and typed_ok == typed


def test_a_fall_in_llc_under_a_flat_loss_is_a_hidden_type_b():
    rng = np.random.default_rng(7)
    c = make_curve([(2.0, 25.0, 0.1), (3.5, -12.0, 0.1)], rng, rel=REL)  # rise with a loss drop; fall, loss flat
    t = detect(c)
    assert [b.kind for b in t.boundaries] == ["peak"] and abs(t.boundaries[0].index - c.boundaries[0]) <= 1
    a, b = t.stages
    assert (a.type, a.hidden) == ("A", False) and a.dllc > 0 and a.dloss < 0
    assert (b.type, b.hidden) == ("B", True) and b.dllc < -3 * b.dllc_se
    assert t.boundaries[0].hidden and not t.boundaries[0].tentative
    assert t.smoothing["stable"]


CONTROLS = {
    "linear in log step": lambda x: 5 + 10 * (x - 1),
    "one wide logistic": lambda x: 5 + 30 / (1 + np.exp(-(x - 3) / 0.8)),
    "saturating": lambda x: 40 - 35 * np.exp(-(x - 1)),
    "constant": lambda x: 20 + 0 * x,
}


def test_controls_without_transitions_give_no_confident_boundaries():
    step = np.unique(np.round(np.logspace(1, 5, 60)).astype(np.int64))
    x = np.log10(step)
    confident = tentative = curves = 0
    for name, f in CONTROLS.items():
        for seed in range(10):
            rng = np.random.default_rng(seed)
            per_chain = f(x)[:, None] * (1 + REL * rng.standard_normal((len(x), 4)))
            t = detect_transitions(step, per_chain.mean(1), loss=4 - 0.5 * x, llc_per_chain=per_chain, config=CFG)
            confident += sum(not b.tentative for b in t.boundaries)
            tentative += sum(b.tentative for b in t.boundaries)
            curves += 1
    print(f"\ncontrols: {confident} confident and {tentative} tentative boundaries in {curves} curves")
    assert confident <= 0.05 * curves


def test_synthetic_curves_spurts_where_llc_changes_fastest():
    """A spurt is found within ±1 checkpoint of each steepest point of the true curve, with its sign."""
    tp = fp = fn = tp_conf = curves = 0
    for i in range(40):
        rng = np.random.default_rng(1000 + i)
        c = random_curve(rng, int(rng.integers(1, 4)), rel=REL)
        if c.spurts_ambiguous:
            continue
        curves += 1
        found = [(s.index, int(np.sign(s.rate)), s.tentative) for s in detect(c).spurts]
        for index, sign in c.spurts:
            hits = [f for f in found if abs(f[0] - index) <= 1 and f[1] == sign]
            tp, fn, tp_conf = tp + bool(hits), fn + (not hits), tp_conf + any(not f[2] for f in hits)
        fp += sum(not any(abs(f[0] - index) <= 1 and f[1] == sign for index, sign in c.spurts) for f in found)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"\nspurts: precision {precision:.3f} recall {recall:.3f} (confident only: recall {tp_conf / (tp + fn):.3f}) "
          f"in {curves} curves, {tp + fn} true spurts")
    assert curves >= 35 and precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_a_steady_climb_has_no_confident_spurts():
    """Wiggles of the smoothed slope on curves without a burst are not spurts (spurt_k_se: look-elsewhere)."""
    step = np.unique(np.round(np.logspace(1, 5, 60)).astype(np.int64))
    x = np.log10(step)
    confident = curves = 0
    for name in ("linear in log step", "saturating", "constant"):
        for seed in range(10):
            rng = np.random.default_rng(seed)
            per_chain = CONTROLS[name](x)[:, None] * (1 + REL * rng.standard_normal((len(x), 4)))
            t = detect_transitions(step, per_chain.mean(1), loss=4 - 0.5 * x, llc_per_chain=per_chain, config=CFG)
            confident += sum(not s.tentative for s in t.spurts)
            curves += 1
    print(f"\ncontrols: {confident} confident spurts in {curves} curves")
    assert confident <= 0.05 * curves


def test_means_and_standard_errors_alone_are_enough():
    rng = np.random.default_rng(3)
    c = make_curve([(2.0, 20.0, 0.1), (3.2, 15.0, 0.1), (4.3, -15.0, 0.1)], rng, rel=REL)
    se = c.per_chain.std(1, ddof=1) / 2
    from_chains = detect(c)
    from_se = detect_transitions(c.step, c.per_chain.mean(1), se, c.loss, config=CFG)
    assert [b.index for b in from_se.boundaries] == [b.index for b in from_chains.boundaries]
    assert matches([b.index for b in from_se.boundaries], c.boundaries) == (2, 0)
    assert [s.type for s in from_se.stages] == c.types == ["A", "A", "B"]


def test_input_checks():
    step = np.array([10, 100, 1000, 10000])
    t = detect_transitions(step, np.ones(4), np.ones(4))
    assert not t.boundaries and "at least 5" in t.notes[0]
    with pytest.raises(ValueError, match="standard errors"):
        detect_transitions(np.arange(1, 9), np.arange(8.0))
    # failed checkpoints (NaN) are left out, and rows may come in any order
    rng = np.random.default_rng(3)
    c = make_curve([(2.0, 20.0, 0.1), (3.5, -12.0, 0.1)], rng, rel=REL)
    order = rng.permutation(len(c.step))
    y = c.per_chain.mean(1)
    y[order[:3]] = np.nan
    t = detect_transitions(c.step[order], y[order], (c.per_chain.std(1, ddof=1) / 2)[order], c.loss[order], config=CFG)
    assert len(t.boundaries) == 1 and abs(c.step[order][t.boundaries[0].index] - c.step[c.boundaries[0]]) <= \
        np.diff(c.step)[c.boundaries[0]] * 2
