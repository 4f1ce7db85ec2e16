"""The transition detector (slt_probe/analysis/transitions.py) on synthetic λ̂ / loss curves with known stage
boundaries and spurts (tests/helpers/curves.py), and on controls without transitions.

Noise: per-chain λ̂ with a relative spread of 5% (4 chains: s.e. 2.5% of λ̂). The figures at other noise
levels are in docs/validation.md ("Stage and spurt detection"); they are measured by the same code with another
`rel`. How the stages are stored is tested in tests/store/test_store_transitions.py, the `transitions` command
in tests/test_cli.py.
"""

import numpy as np
import pytest
from curves import dense_steps, make_curve, random_curve, random_dense_curve

from slt_probe.analysis.transitions import TransitionConfig, curve_se, detect_transitions, log_steps, pooled_se, \
    scatter_ratio

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
    with pytest.raises(ValueError, match="zero or missing"):
        detect_transitions(np.arange(1, 9), np.arange(8.0), np.zeros(8))
    with pytest.raises(ValueError, match="no scatter to estimate its noise from"):
        detect_transitions(np.arange(1, 9) * 100, np.full(8, 3.0))  # a constant: no s.e., and none to read off
    with pytest.raises(ValueError, match="appears twice"):
        detect_transitions(np.array([1, 2, 3, 3, 4, 5]), np.arange(6.0), np.ones(6))
    # failed checkpoints (NaN) are left out, and rows may come in any order
    rng = np.random.default_rng(3)
    c = make_curve([(2.0, 20.0, 0.1), (3.5, -12.0, 0.1)], rng, rel=REL)
    order = rng.permutation(len(c.step))
    y = c.per_chain.mean(1)
    y[order[:3]] = np.nan
    t = detect_transitions(c.step[order], y[order], (c.per_chain.std(1, ddof=1) / 2)[order], c.loss[order], config=CFG)
    assert len(t.boundaries) == 1 and abs(c.step[order][t.boundaries[0].index] - c.step[c.boundaries[0]]) <= \
        np.diff(c.step)[c.boundaries[0]] * 2


# ----------------------------------------------------------------------------------------------------------
# curves from elsewhere: the noise from the curve, a stated s.e. checked, dense grids
# (the full table, at every condition: benchmarks/transitions_noise.py; docs/validation.md)


def stated(c, factor=1.0):
    return factor * c.per_chain.std(1, ddof=1) / 2


def score(curves, run):
    """(precision, recall, types right, types scored) of boundaries over curves; a match within ±1 checkpoint or
    ±0.05 decades (the detector's resolution)."""
    tp = fp = fn = typed = typed_ok = 0
    for c in curves:
        t = run(c)
        near = [[abs(f - b) <= 1 or abs(np.log10(c.step[f] / c.step[b])) <= 0.05 for b in c.boundaries]
                for f in (b.index for b in t.boundaries)]
        hit = sum(any(row[j] for row in near) for j in range(len(c.boundaries)))
        tp, fp, fn = tp + hit, fp + sum(not any(row) for row in near), fn + len(c.boundaries) - hit
        if hit == len(c.boundaries) == len(t.boundaries):
            typed, typed_ok = typed + len(c.types), typed_ok + sum(s.type == ty for s, ty in zip(t.stages, c.types))
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), typed_ok, typed


def test_the_noise_read_off_the_curve_is_near_the_truth():
    """curve_se against the true s.e. (2.5% of λ: it grows with λ̂) at each checkpoint: within a factor 1.5 on 60
    log-spaced checkpoints (sharp changes between sparse checkpoints pass partly for noise), 1.25 on a dense grid."""
    for gen, within in ((random_curve, 1.5), (random_dense_curve, 1.25)):
        ratios = []
        for i in range(20):
            rng = np.random.default_rng(1000 + i)
            c = gen(rng, int(rng.integers(1, 4)), rel=REL)
            ratios.append(np.median(curve_se(log_steps(c.step), c.per_chain.mean(1)) / (c.llc * REL / 2)))
        print(f"\n{gen.__name__}: estimated / true s.e., median over checkpoints: "
              f"{np.min(ratios):.2f} .. {np.max(ratios):.2f}")
        assert 1 / within <= np.min(ratios) and np.max(ratios) <= within, ratios


def test_a_right_se_passes_the_check_and_a_wrong_one_does_not():
    """The scatter / s.e. ratio with the true s.e. stays inside se_factor (2) either way; off by 3 it is outside."""
    cfg = TransitionConfig()
    right, off = [], []
    for gen in (random_curve, random_dense_curve):
        for i in range(50):
            rng = np.random.default_rng(1000 + i)
            c = gen(rng, int(rng.integers(1, 4)), rel=REL)
            x, y, se = log_steps(c.step), c.per_chain.mean(1), pooled_se(stated(c))
            right.append(scatter_ratio(x, y, se))
            off += [scatter_ratio(x, y, 3 * se) * cfg.se_factor, scatter_ratio(x, y, se / 3) / cfg.se_factor]
    print(f"\nscatter / s.e. with the right s.e.: {min(right):.2f} .. {max(right):.2f}")
    assert 1 / cfg.se_factor < min(right) and max(right) < cfg.se_factor
    assert max(off[0::2]) < 1 and min(off[1::2]) > 1  # x3: ratio < 1/factor; x0.3: ratio > factor


@pytest.mark.parametrize("factor", [None, 0.3, 3.0, 30.0])
def test_without_an_se_or_with_a_wrong_one_the_stages_are_found(factor):
    """No s.e. (noise from the curve), or a stated one off by ×0.3, ×3 or ×30 (a std column passed as s.e.): the
    same precision, recall and types as with the chains."""
    curves = [random_curve(rng, int(rng.integers(1, 4)), rel=REL)
              for rng in (np.random.default_rng(1000 + i) for i in range(25))]
    se = (lambda c: None) if factor is None else (lambda c: stated(c, factor))
    precision, recall, ok, typed = score(curves, lambda c: detect_transitions(c.step, c.per_chain.mean(1), se(c),
                                                                             c.loss, config=CFG))
    print(f"\ns.e. {factor or 'absent'}: precision {precision:.2f} recall {recall:.2f} types {ok}/{typed}")
    assert precision >= 0.9 and recall >= 0.9 and ok == typed >= 35


def test_a_wrong_se_is_reported_rescaled_and_can_be_insisted_on():
    c = make_curve([(2.0, 20.0, 0.1), (3.2, 15.0, 0.1), (4.3, -15.0, 0.1)], np.random.default_rng(3), rel=REL)
    std = c.per_chain.std(1, ddof=1) * 10  # a spread over draws, 20x the s.e.
    t = detect_transitions(c.step, c.per_chain.mean(1), std, c.loss, config=CFG)
    assert t.noise["source"] == "stated" and t.noise["rescaled"] and t.noise["scatter_ratio"] < 0.1
    assert any("disagrees with the curve's own scatter" in n for n in t.notes)
    assert [s.type for s in t.stages] == c.types == ["A", "A", "B"]
    insisted = detect_transitions(c.step, c.per_chain.mean(1), std, c.loss, config=TransitionConfig(
        resamples=100, trust_se=True))
    assert not insisted.noise["rescaled"] and not insisted.boundaries  # what the check saves a user from
    chains = detect_transitions(c.step, c.per_chain.mean(1), loss=c.loss, llc_per_chain=c.per_chain, config=CFG)
    assert chains.noise["source"] == "chains" and not chains.notes
    absent = detect_transitions(c.step, c.per_chain.mean(1), loss=c.loss, config=CFG)
    assert absent.noise["source"] == "curve" and "estimated from the curve" in absent.notes[0]


def test_a_rounded_table_is_not_taken_for_a_noise_free_one():
    """λ̂ written to one decimal (a published table): many pseudo-residuals round to exactly 0; the noise read off
    the curve keeps at least the rounding's, q²/12, and no boundary appears on a smooth saturating curve."""
    step = dense_steps()
    x = np.log10(step)
    y = np.round(40 - 35 * np.exp(-(x - 1)) + 0.02 * np.random.default_rng(0).standard_normal(len(x)), 1)
    assert np.mean(np.diff(y) == 0) > 0.3
    se = curve_se(x, y)
    assert se.min() >= 0.1 / np.sqrt(12) - 1e-12
    assert not [b for b in detect_transitions(step, y, config=CFG).boundaries if not b.tentative]


@pytest.mark.parametrize("factor", [None, 3.0])
def test_controls_stay_quiet_without_an_se_or_with_a_wrong_one(factor):
    confident = curves = 0
    for grid in ("log", "dense"):
        step = np.unique(np.round(np.logspace(1, 5, 60)).astype(np.int64)) if grid == "log" else dense_steps()
        x = np.log10(step)
        for name, f in CONTROLS.items():
            for seed in range(3 if grid == "dense" else 5):
                rng = np.random.default_rng(seed)
                per_chain = f(x)[:, None] * (1 + REL * rng.standard_normal((len(x), 4)))
                se = None if factor is None else factor * per_chain.std(1, ddof=1) / 2
                t = detect_transitions(step, per_chain.mean(1), se, 4 - 0.5 * x, config=CFG)
                confident += sum(not b.tentative for b in t.boundaries)
                curves += 1
    print(f"\ns.e. {factor or 'absent'}: {confident} confident false boundaries in {curves} controls")
    assert confident <= 0.05 * curves


@pytest.mark.parametrize("chains", [True, False])
def test_dense_grids_find_the_stages_and_thinning_does_not_move_them(chains):
    """505 checkpoints (every 100 steps to 50k), with the chains or with nothing but the means: precision and recall
    as on log grids, and keeping every 2nd or 4th checkpoint above step 1000 leaves the boundaries where they were."""
    curves = [random_dense_curve(rng, int(rng.integers(1, 4)), rel=REL)
              for rng in (np.random.default_rng(2000 + i) for i in range(12))]

    def run(c, keep=slice(None)):
        return detect_transitions(c.step[keep], c.per_chain[keep].mean(1), loss=c.loss[keep],
                                  llc_per_chain=c.per_chain[keep] if chains else None,
                                  config=TransitionConfig(resamples=50))

    precision, recall, ok, typed = score(curves, run)
    agree = 0
    for c in curves:
        full = [c.step[b.index] for b in run(c).boundaries]
        for k in (2, 4):
            keep = (c.step < 1000) | (np.arange(len(c.step)) % k == 0)
            thinned = [c.step[keep][b.index] for b in run(c, keep).boundaries]
            agree += len(full) == len(thinned) and all(abs(np.log10(a / b)) <= 0.05 for a, b in zip(full, thinned))
    print(f"\ndense: precision {precision:.2f} recall {recall:.2f} types {ok}/{typed}; thinned alike: {agree}/24")
    assert precision >= 0.9 and recall >= 0.9 and ok == typed >= 15
    assert agree >= 21
