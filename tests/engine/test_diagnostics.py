"""The diagnostics of a set of chains and their verdict (slt_probe/engine/diagnostics.py): each rule at its level and
at its boundary on synthetic traces, a diagnostic that cannot be computed never reading `ok`, and one end-to-end
regression whose λ is known, read at good settings (`ok`), with a 10x step (`warn`) and on the wrong data (`fail`)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from potentials import linear_regression_problem, sgld_config

from slt_probe import estimate_llc
from slt_probe.engine import diagnostics as D
from slt_probe.engine.diagnostics import ADVICE, diagnose, mala_step_bias

NBETA, INIT = 10.0, 0.9


def traces(chains=4, draws=400, burnin=20, offsets=None, sd=0.05, mean=1.0, seed=0):
    """iid Gaussian loss traces [chains, burnin + draws] (a perfectly mixed sampler), chain c shifted by offsets[c];
    returns the keyword arguments of diagnose, λ̂ per chain consistent with the traces."""
    rng = np.random.default_rng(seed)
    loss = mean + rng.normal(0, sd, (chains, burnin + draws))
    if offsets is not None:
        loss += np.asarray(offsets, dtype=float)[:, None]
    per_chain = NBETA * (loss[:, burnin:].mean(axis=1) - INIT)
    return dict(loss=loss, burnin=burnin, nbeta=NBETA, init_loss=INIT, llc_per_chain=per_chain, num_params=100)


def with_llc(kw, per_chain):
    """The same traces with λ̂ per chain replaced (the λ̂ rules read llc_per_chain only)."""
    return {**kw, "llc_per_chain": np.asarray(per_chain, dtype=float)}


def test_one_diverged_chain_is_left_out_and_named():
    loss = np.full((3, 30), 1.0) + np.random.default_rng(0).normal(0, 0.01, (3, 30))
    loss[1, 17:] = np.inf
    per_chain = 10.0 * (loss[:, 5:].mean(axis=1) - 0.9)
    per_chain[1] = np.nan
    d = diagnose(loss, burnin=5, nbeta=10.0, init_loss=0.9, llc_per_chain=per_chain, num_params=100)
    assert d.verdict == "fail" and d.chains_ok == 2
    assert d.diverged == [{"chain": 1, "step": 17, "draw": 12}]
    assert "chain 1 diverged (non-finite loss at draw 12)" in d.reasons[0]
    assert "diverged" in d.failed


def test_well_mixed_chains_read_ok():
    d = diagnose(**traces())
    assert d.verdict == "ok", d.reasons
    assert d.reasons == [] and d.failed == []
    assert d.rhat < D.RHAT_WARN and d.ess_bulk > D.ESS_WARN and math.isfinite(d.drift)


# ---------------------------------------------------------------------------------------------------------------
# what cannot be computed is never ok


@pytest.mark.parametrize("draws", [1, 2, 3])
def test_fewer_than_four_draws_leave_rhat_and_ess_nan_and_read_warn_with_the_reason(draws):
    d = diagnose(**traces(draws=draws))
    assert math.isnan(d.rhat) and math.isnan(d.ess_bulk) and math.isnan(d.drift)
    assert d.verdict == "warn", d.reasons
    assert any("R-hat and ESS need at least 4 draws per chain" in r and f"got {draws}" in r for r in d.reasons)
    assert d.failed == ["draws"]


@pytest.mark.parametrize("draws", [4, 5, 7])
def test_fewer_than_eight_draws_leave_the_drift_unchecked_and_read_warn(draws):
    # 64 chains: R-hat and ESS are fine here, only the drift check is missing
    d = diagnose(**traces(chains=64, draws=draws))
    assert math.isfinite(d.rhat) and math.isnan(d.drift)
    assert d.verdict == "warn" and any(f"drift check: it needs at least 8 draws per chain; got {draws}" in r
                                       for r in d.reasons), d.reasons


def test_eight_draws_of_many_chains_can_read_ok():
    d = diagnose(**traces(chains=64, draws=8))
    assert math.isfinite(d.drift) and d.verdict == "ok", d.reasons


def test_one_chain_has_no_rhat_and_reads_warn():
    d = diagnose(**traces(chains=1, draws=400))
    assert math.isnan(d.rhat) and math.isfinite(d.ess_bulk)
    assert d.verdict == "warn" and any(r.startswith("one chain: no R-hat") for r in d.reasons), d.reasons
    assert "chains" in d.failed


def test_a_constant_trace_reads_warn():
    kw = traces()
    kw["loss"] = np.ones_like(kw["loss"])
    d = diagnose(**with_llc(kw, NBETA * (1 - INIT) * np.ones(4)))
    assert math.isnan(d.rhat) and d.verdict == "warn"
    assert any(r.startswith("the loss trace is constant") for r in d.reasons), d.reasons


@pytest.mark.parametrize("chains", [1, 2, 3])
@pytest.mark.parametrize("draws", [1, 2, 3, 5, 7, 8, 20])
def test_a_nan_diagnostic_is_never_ok(chains, draws):
    d = diagnose(**traces(chains=chains, draws=draws, seed=chains * 100 + draws))
    if any(math.isnan(v) for v in (d.rhat, d.ess_bulk, d.drift)) or (chains > 1 and math.isnan(d.drift_p)):
        assert d.verdict != "ok" and d.reasons


# ---------------------------------------------------------------------------------------------------------------
# R-hat


@pytest.mark.parametrize("spread, verdict", [(0.0, "ok"), (0.04, "warn"), (0.2, "fail")])
def test_rhat_warns_above_1_1_and_fails_above_1_5(spread, verdict):
    # the chains' means differ by ± spread around a within-chain sd of 0.05
    d = diagnose(**traces(offsets=[-spread, -spread / 3, spread / 3, spread]))
    band = {"ok": (0, D.RHAT_WARN), "warn": (D.RHAT_WARN, D.RHAT_FAIL), "fail": (D.RHAT_FAIL, np.inf)}[verdict]
    assert band[0] < d.rhat <= band[1], d.rhat
    assert d.verdict == verdict, d.reasons
    if verdict == "fail":
        assert any(r.startswith(f"split-R-hat {d.rhat:.3f} > 1.5") for r in d.reasons)


def test_a_huge_rhat_from_too_few_draws_is_warn_not_fail():
    # below RHAT_FAIL_MIN_DRAWS draws split-R-hat is noise itself: too few draws is a warning
    kw = traces(draws=D.RHAT_FAIL_MIN_DRAWS - 1, offsets=[-0.2, -0.07, 0.07, 0.2])
    d = diagnose(**kw)
    assert d.rhat > D.RHAT_FAIL and d.verdict == "warn", (d.rhat, d.reasons)
    d = diagnose(**traces(draws=D.RHAT_FAIL_MIN_DRAWS, offsets=[-0.2, -0.07, 0.07, 0.2]))
    assert d.rhat > D.RHAT_FAIL and d.verdict == "fail", (d.rhat, d.reasons)


def test_perfect_chains_of_sixteen_draws_do_not_fail_by_chance():
    """The level RHAT_FAIL at RHAT_FAIL_MIN_DRAWS: iid chains must stay below it (measured max 1.17 in 300)."""
    worst = max(diagnose(**traces(draws=D.RHAT_FAIL_MIN_DRAWS, seed=s)).rhat for s in range(200))
    assert worst < D.RHAT_FAIL, worst


def test_few_effective_samples_warn():
    # a random walk: strongly autocorrelated, ESS far below 50 with chains that agree on their spread
    rng = np.random.default_rng(1)
    kw = traces(draws=200)
    kw["loss"] = 1.0 + 0.002 * np.cumsum(rng.normal(size=kw["loss"].shape), axis=1)
    kw["llc_per_chain"] = NBETA * (kw["loss"][:, 20:].mean(axis=1) - INIT)
    d = diagnose(**kw)
    assert d.ess_bulk < D.ESS_WARN and d.verdict != "ok"
    assert "ess" in d.failed


# ---------------------------------------------------------------------------------------------------------------
# λ̂ below 0 and above d/2


def test_strongly_negative_llc_fails():
    kw = traces(mean=INIT - 1.0)  # the draws sit 1.0 below L_n(w*): λ̂ ≈ −10, s.e. ≈ 0.01
    d = diagnose(**kw)
    assert d.verdict == "fail" and "negative" in d.failed
    assert any(r.startswith("negative λ̂") and "s.e. below 0" in r for r in d.reasons), d.reasons


T99_3 = stats.t.isf(D.NEG_FAIL_P, 3)  # 4.54: the one-sided 1% point of t with 3 dof


@pytest.mark.parametrize("z, verdict", [(T99_3 + 0.05, "fail"), (T99_3 - 0.05, "warn"), (0.5, "warn"), (-0.5, "ok")])
def test_negative_llc_fails_when_significant_across_chains_and_warns_within_noise(z, verdict):
    # 4 chains with s.e. exactly 1: λ̂ = −z; fail when a one-sided t-test (3 dof) rejects λ >= 0 at p < 0.01
    spread = np.array([-1.5, -0.5, 0.5, 1.5]) / (np.std([-1.5, -0.5, 0.5, 1.5], ddof=1) / 2)
    d = diagnose(**with_llc(traces(), -z + spread))
    assert d.verdict == verdict, d.reasons
    if z > 0:
        assert "negative" in d.failed and any(f"{z:.3g} s.e. below 0" in r for r in d.reasons), d.reasons


def test_two_chains_five_standard_errors_below_zero_is_only_a_warning():
    """A t with 1 dof: 5 s.e. happen by chance in 6% of runs (the random, untrained DLN of test_walker reads so)."""
    d = diagnose(**with_llc(traces(chains=2), [-5.0 - 1.0, -5.0 + 1.0]))  # s.e. 1
    assert d.verdict == "warn" and "negative" in d.failed, d.reasons
    d = diagnose(**with_llc(traces(chains=2), [-40.0 - 1.0, -40.0 + 1.0]))  # p = 0.008
    assert d.verdict == "fail", d.reasons


def test_one_strongly_negative_chain_fails_on_its_own_monte_carlo_error():
    # one chain has no spread across chains: its s.e. comes from its ESS
    d = diagnose(**traces(chains=1, mean=INIT - 1.0))
    assert d.verdict == "fail" and "negative" in d.failed, d.reasons


@pytest.mark.parametrize("llc, verdict", [(50.0, "ok"), (52.0, "ok"), (56.0, "warn")])
def test_llc_above_half_the_parameter_count_warns_beyond_the_step_bias(llc, verdict):
    # d = 100: d/2 = 50, and 5% above it (52.5) is the discretization bias of good settings
    d = diagnose(**with_llc(traces(), [llc - 0.01, llc + 0.01, llc - 0.01, llc + 0.01]))
    assert d.verdict == verdict, d.reasons


# ---------------------------------------------------------------------------------------------------------------
# the step size, from the MALA acceptance


def ula_acceptance(d: int, s: float, n: int = 20000, seed: int = 0) -> float:
    """Mean MALA acceptance of an unadjusted Langevin step ε = s/h at its own stationary law on N(0, I_d / h)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1 / math.sqrt(1 - s / 4), (n, d))  # the ULA stationary variance, h = 1
    y = x - s / 2 * x + math.sqrt(s) * rng.normal(size=(n, d))
    log_alpha = (-(y**2 - x**2).sum(1) / 2
                 + (((y - x + s / 2 * x) ** 2).sum(1) - ((x - y + s / 2 * y) ** 2).sum(1)) / (2 * s))
    return float(np.exp(np.minimum(log_alpha, 0)).mean())


@pytest.mark.parametrize("d, s", [(1, 0.3), (12, 0.5), (104, 0.2), (1000, 0.1)])
def test_the_step_bias_inverts_the_acceptance_of_a_gaussian(d, s):
    true_bias = s / (4 - s)  # ULA inflates the variance of N(0, 1/h) by 1 / (1 − εh/4)
    implied = mala_step_bias(ula_acceptance(d, s, n=20000 if d < 500 else 2000), d)
    assert abs(implied - true_bias) <= 0.2 * true_bias, (implied, true_bias)


def test_the_step_bias_is_zero_at_full_acceptance_and_unbounded_at_one_half():
    assert mala_step_bias(1.0, 10) == 0.0 and mala_step_bias(0.5, 10) == math.inf
    assert math.isnan(mala_step_bias(float("nan"), 10))
    assert mala_step_bias(0.9, 10) > mala_step_bias(0.9, 1000) > 0  # the same acceptance over more parameters


@pytest.mark.parametrize("acc, verdict, text", [(0.99, "ok", None), (0.75, "warn", "implies a step that biases"),
                                                (0.40, "warn", "MALA acceptance 0.40 < 0.5")])
def test_mala_acceptance_warns_when_it_implies_a_biased_step(acc, verdict, text):
    kw = traces()
    kw["num_params"] = 104  # d = 104, as the (8, 6, 4, 8) DLN: 0.99 implies ~1%, 0.75 ~17%
    kw["llc_per_chain"] = kw["llc_per_chain"] * 0 + 24.0 + np.array([-0.1, 0.1, -0.1, 0.1])
    mala = np.full((4, 40), acc)
    d = diagnose(**kw, mala=mala, mala_step=np.arange(40) * 10)
    assert d.acceptance == pytest.approx(acc) and d.verdict == verdict, d.reasons
    if text:
        assert any(text in r for r in d.reasons) and "mala" in d.failed


def test_every_failed_check_has_advice():
    for kw in (traces(draws=2), traces(chains=1), traces(mean=INIT - 1.0), traces(offsets=[-0.2, 0, 0, 0.2])):
        d = diagnose(**kw)
        assert d.failed and all(k in ADVICE for k in d.failed), d.failed


# ---------------------------------------------------------------------------------------------------------------
# end to end, on a regular model whose λ = d/2 is known


def test_a_regression_reads_ok_at_good_settings_warn_with_a_10x_step_and_fail_on_the_wrong_data():
    """y = W x, W 4 x 3, λ = 6 (tests/validation/test_regular.py), 8 chains x 1000 draws: at lr 1e-4 the estimate
    is within a few % and reads ok; at lr 1e-3 it is ~15% high (ULA: 1/(1 − lr·nβ/8)) and must not read ok; at W*
    of one regression on the data of another, w* is not a minimum: λ̂ is hugely negative and must fail."""
    hp = dict(nbeta=1000.0, localization=1.0, chains=8, burnin=200, draws=1000)
    model, data, loss_fn = linear_regression_problem(4, 3, seed=0)
    _, other_data, _ = linear_regression_problem(4, 3, seed=1)
    torch.manual_seed(0)
    good = estimate_llc(model, data, loss_fn=loss_fn, config=sgld_config(0, lr=1e-4, **hp))
    big_step = estimate_llc(model, data, loss_fn=loss_fn, config=sgld_config(0, lr=1e-3, **hp))
    wrong = estimate_llc(model, other_data, loss_fn=loss_fn, config=sgld_config(0, lr=1e-4, **hp))
    for name, r in (("good", good), ("lr x10", big_step), ("wrong data", wrong)):
        print(f"{name}: λ̂ {r.llc_mean:.4g} ± {r.llc_se:.2g} {r.verdict} {r.diagnostics.reasons}")
    assert abs(good.llc_mean - 6) <= 0.1 * 6 and good.verdict == "ok", good.diagnostics.reasons
    assert big_step.llc_mean > 6.5 and big_step.verdict != "ok"
    assert wrong.llc_mean < 0 and wrong.verdict == "fail" and "negative" in wrong.diagnostics.failed
