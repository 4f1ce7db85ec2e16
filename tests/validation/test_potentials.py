"""Validation of λ̂ against closed-form learning coefficients of monomial and normal-crossing potentials.

Each potential is a small regression model (tests/helpers/potentials.py): one parameter vector w, initialised at the
true parameter w* = 0, inputs x ~ N(0, I), target 0, MSE, so the population loss is the potential.

How the hyperparameters are chosen (U = nβ L + γ/2 |w|² is what SGLD samples, h = the curvature of U):
* ULA bias: the stationary law of SGLD with step lr is off by O(lr·h) (for a Gaussian, variance × 1/(1 - lr·h/4)).
  lr is set so that lr·h <= ~0.05 at typical draws and <= ~0.3 at the 99th percentile of the visited region
  (checked offline); larger lr also makes ULA unstable in the steep tails of w^4, w^6 (diverging chains).
* localization: γ << nβ·h so that it does not pull λ̂ down (the bias at each setting is quoted, computed by
  quadrature), yet it keeps the flat directions (the w_i with k_i = 0, the arms of a crossing) bounded.
* For a quasi-homogeneous potential (monomial sums, single-coordinate crossings) nβ E[L] = λ exactly at every
  nβ when γ -> 0 (substitute w_i -> t^{1/p_i} w_i), so nβ only sets the length scale; it is chosen to make
  the coordinates about equally stiff, so that one lr suits all of them.
* burn-in: several relaxation times 1/(lr·h) of the slowest coordinate; draws: enough for a s.e. <= ~3%.
* chains: these models have 2-3 parameters, so a vmapped step costs the same for 256 chains as for 4; many
  short chains rather than a few long ones.
"""

import math

import pytest
from potentials import describe, monomial_problem, normal_crossing_problem, run_case

from slt_probe.engine.closed_forms import (
    monomial_learning_coefficient,
    normal_crossing_estimand,
    normal_crossing_learning_coefficient,
)

SEED = 0


def check(name, lam, result, hp, rel_tol):
    print("\n" + describe(name, lam, result))
    assert math.isfinite(result.llc_mean)
    assert result.diagnostics.chains_ok == hp["chains"], result.diagnostics.reasons  # no chain diverged
    rel = (result.llc_mean - lam) / lam
    assert abs(rel) <= rel_tol, f"{name}: λ̂ = {result.llc_mean:.4f}, λ = {lam:.4f}, rel. error {rel:+.1%}"


# ----------------------------------------------------------------------------------------------------------
# monomial sums K(w) = 1/2 sum_i w_i^{p_i}, λ = sum_i 1/p_i

# nβ = 10 for all: in u_i = (nβ/2)^{1/p_i} w_i each term is u^p, whose curvature p(p-1)u^{p-2} is 2 (p=2),
# ~6 typical / ~17 in the tail (p=4), ~9 / ~48 (p=6); in w that is h = 10, ~13 / ~38, ~16 / ~80: within a
# factor ~8 of each other, so one lr serves every coordinate (at nβ = 1000 the p=2 coordinate would be ~15x
# stiffer than the typical p=6 one, so the p=6 coordinate would relax ~15x slower than the p=2 one).
# γ = 0.01: localization bias -0.10% (p=2), -0.15% (p=4), -0.19% (p=6) (quadrature).
MONO_NB, MONO_GAMMA = 10.0, 0.01
MONOMIAL_CASES = [
    # lr·h = 0.05 (ULA bias +1.3%), relaxation 1/(lr·h) = 20 steps
    pytest.param([2], dict(lr=5e-3, burnin=200, draws=1000), id="p=2"),
    # lr·h ~ 0.06 typical, 0.19 in the tail
    pytest.param([4], dict(lr=5e-3, burnin=200, draws=1000), id="p=4"),
    pytest.param([2, 4], dict(lr=5e-3, burnin=200, draws=1000), id="p=2,4"),
    # the p=6 tail (h ~ 80) sets lr = 2e-3 (lr·h <= 0.16); the p=2 coordinate then relaxes in 50 steps
    pytest.param([2, 4, 6], dict(lr=2e-3, burnin=300, draws=1500), id="p=2,4,6"),
    pytest.param([6, 6], dict(lr=2e-3, burnin=300, draws=1500), id="p=6,6"),
]


@pytest.mark.parametrize("powers, hp", MONOMIAL_CASES)
def test_monomial_potential(powers, hp):
    hp = dict(nbeta=MONO_NB, localization=MONO_GAMMA, chains=256, **hp)
    lam = monomial_learning_coefficient(powers)
    result = run_case(monomial_problem(powers, seed=SEED), hp, seed=SEED)
    check(f"monomial {powers}", lam, result, hp, rel_tol=0.10)


# ----------------------------------------------------------------------------------------------------------
# normal crossings f(x, w) = x prod_i w_i^{k_i}, K(w) = prod_i w_i^{2 k_i}, λ = 1 / (2 max k)

NORMAL_CROSSING_CASES = [
    # One active coordinate: U = nβ w^{2k} (quasi-homogeneous, λ̂ = 1/(2k) exactly as γ -> 0) plus a free
    # coordinate w_1 that only γ holds (N(0, 1/γ), sd 10; it does not enter the loss, so it cannot bias λ̂).
    # nβ = 10, γ = 0.01: localization bias on the active coordinate <= 0.1% (quadrature).
    # k=1: h = 2nβ = 20, lr = 2.5e-3: lr·h = 0.05 (ULA bias +1.3%)
    pytest.param([0, 1], dict(nbeta=10.0, localization=0.01, lr=2.5e-3, burnin=200, draws=1000), id="k=0,1"),
    # k=2: h ~ 13 typical, ~54 in the tail: lr·h <= 0.14
    pytest.param([0, 2], dict(nbeta=10.0, localization=0.01, lr=2.5e-3, burnin=200, draws=1000), id="k=0,2"),
    # k=3: h ~ 20 typical, ~100 in the tail: lr = 1.5e-3, lr·h <= 0.15
    pytest.param([0, 3], dict(nbeta=10.0, localization=0.01, lr=1.5e-3, burnin=300, draws=1200), id="k=0,3"),
    # k=[1,2]: λ = 1/4 from w_2 (multiplicity 1), but the crossing is not quasi-homogeneous in one scale:
    # along the arm w_2 ≈ 0 the chain must spread out in w_1 (posterior density ∝ |w_1|^(-1/2) there), and the
    # finite-temperature deficit shrinks only like (nβ R^6)^(-1/4) with R the extent of w_1 that is sampled.
    # Exact tempered posterior (quadrature): -18% at nβ R^6 = 1e2, -10% at 1e3, -6% at 1e4, -3% at 1e5.
    # With lr set by the stiffness along the arm (h ~ 12 sqrt(nβ) |w_1| in w_2), R grows like sqrt(steps·lr),
    # so only the budget decides: 10k steps reach |w_1| ~ 1.6 and about -5%; the result depends on (nβ, lr)
    # only through nβ lr^3 (rescaling w), so nβ = 100 is a choice of units. γ = 0.01 (R_γ = 10) does not bind
    # within the run and keeps the arm bounded. lr = 2e-4: mean lr·h ~ 0.02-0.03 (ULA bias < 1%), 99th
    # percentile 0.3-0.7, no divergence in 10 x 256 chains. Measured over seeds 0-9: -4% on average, sd 4%,
    # worst -9.2%; 10k steps gave -9% on average (worst -13.4%), too close to the tolerance for a stable test.
    pytest.param([1, 2], dict(nbeta=100.0, localization=0.01, lr=2e-4, burnin=1500, draws=14500), id="k=1,2"),
]


@pytest.mark.parametrize("ks, hp", NORMAL_CROSSING_CASES)
def test_normal_crossing_potential(ks, hp):
    hp = dict(chains=256, **hp)
    lam = normal_crossing_learning_coefficient(ks)
    result = run_case(normal_crossing_problem(ks, seed=SEED), hp, seed=SEED)
    check(f"normal crossing {ks}", lam, result, hp, rel_tol=0.15)


# ----------------------------------------------------------------------------------------------------------
# crossings of multiplicity m = 2: they read low, by a known deficit; asserted as that, not within 15% of λ

# λ = 1/(2k) with multiplicity 2. Even an exact sampler of the localized tempered posterior is biased here:
# Z(nβ) ~ nβ^-λ (log nβ)^(m-1), so nβ E[L] = λ - (m-1)/log(nβ R^(4k)) + ..., R the extent of the arms
# (quadrature, γ = 0.01: [1,1] -11% at nβ = 1e3 and -9% at 1e5; [2,2] -13% / -12%; [3,3] -14% / -13%; with
# γ = 1: -22% / -15%, -34% / -25%, -41% / -32%). SGLD must also reach the arms, where the stiffness grows
# with |w| (h ~ nβ^(1/k) R^2 across the arm at distance R), so lr·h bounds how far a chain of T steps gets;
# rescaling w shows that λ̂ depends on (nβ, lr) only through nβ lr^(2k) at fixed T and γ·lr (measured: the
# same λ̂ to 3 digits for nβ = 10 ... 1e5 with lr ∝ nβ^(-1/(2k))). A larger nβ therefore buys nothing unless
# lr shrinks and the budget grows; at a fixed lr a larger nβ is a larger effective step, whose positive ULA
# bias hides the deficit and then makes chains diverge. The error falls only like 1/log(steps):
# [1,1] -35% / -24% / -14% at 2k / 8k / 32k steps.
# Settings: nβ = 100 (a choice of units, see above); γ = 0.01 (R_γ = 10 never binds within 8k steps: a binding
# γ = 1 costs another 10-15%); lr the largest with mean lr·h <= 0.05, 99th percentile <= 0.5 and no divergence
# in 8-12 x 256 chains (at 5e-4, [2,2] and [3,3] lose chains); 8k steps (~3 s). Measured over seeds 0-3:
# [1,1] -22..-26%, [2,2] -27..-33%, [3,3] -31..-37% (devinterp 2.0.1: -35% and -38% for [2,2] and [3,3]).
# [1,1] is not asserted at 15% with the multiplicity-one crossings: the exact tempered posterior
# alone is -15% only at nβ R^4 ~ 1e5, and the honest SGLD settings above need ~32k steps (~13 s) for -14%.
# Longer runs do not rescue it honestly: 64k steps at lr 3e-4 read -7.8%, but 128k steps at lr 1.5e-4 (the
# same reach lr·T, half the step) read -14.6%, so the -7.8% was ULA bias at the far arms (lr·h ~ 1 at |w| ~ 4),
# above the exact posterior's -12.5% (nβ 100, γ 0.01). An unbiased chain must reach R_γ = 10 with lr·h <= 0.1,
# which takes ~2e7 steps.
# What is asserted instead: no chain diverges, and λ̂ reads 10-45% below λ. At least 10% below: the exact tempered
# posterior is itself at least that low for every case here (-11% or more at nβ <= 1e3, -12.5% for [1,1] at nβ 100,
# γ 0.01), so a reading within 10% of λ is ULA bias hiding the deficit (as at 64k steps, lr 3e-4, above). At most
# 45% below: seeds 0-3 read -22..-37% (seed 0: -23.7%, -29.7%, -33.5%; devinterp 2.0.1 -38% for [3,3]), so a
# sampler whose chains no longer reach the arms fails.
M2_BELOW = (0.10, 0.45)  # λ̂ within [λ (1 - 0.45), λ (1 - 0.10)]
MULTIPLICITY_TWO_CASES = [
    pytest.param([1, 1], dict(lr=3e-4), id="k=1,1"),
    pytest.param([2, 2], dict(lr=4e-4), id="k=2,2"),
    pytest.param([3, 3], dict(lr=4e-4), id="k=3,3"),
]


@pytest.mark.parametrize("ks, hp", MULTIPLICITY_TWO_CASES)
def test_normal_crossing_multiplicity_two_reads_low_by_its_known_deficit(ks, hp, record_property):
    hp = dict(nbeta=100.0, localization=0.01, chains=256, burnin=1000, draws=7000, **hp)
    lam = normal_crossing_learning_coefficient(ks)
    result = run_case(normal_crossing_problem(ks, seed=SEED), hp, seed=SEED)
    print("\n" + describe(f"normal crossing {ks} (m = 2, reads low)", lam, result))
    record_property("lambda", lam)
    record_property("lambda_hat", result.llc_mean)
    record_property("relative_error", (result.llc_mean - lam) / lam)
    assert math.isfinite(result.llc_mean) and result.llc_mean > 0
    assert result.diagnostics.chains_ok == hp["chains"], result.diagnostics.reasons  # no chain diverged
    rel = (result.llc_mean - lam) / lam
    least, most = M2_BELOW
    assert -most <= rel <= -least, f"{ks}: λ̂ = {result.llc_mean:.4f}, λ = {lam:.4f}, rel. error {rel:+.1%}, " \
                                   f"expected {-most:.0%} to {-least:.0%}"


# The sampler itself is right on the [1, 1] crossing: at a (nβ, γ) where the chains can equilibrate within the
# budget, λ̂ matches the exact finite-temperature expectation E[nβ L] of the localized tempered posterior
# (normal_crossing_estimand, quadrature), which is far below λ = 1/2 (-35% at nβ = 30, γ = 1). So the
# undershoot above is the posterior's finite-temperature bias plus the limited reach of the chains, not a
# sampler error. γ = 1 bounds the arms to |w| ~ 1-3, where h = 2 nβ w1^2 <= ~500: lr = 6e-4 gives lr·h ~ 0.02
# typical, 0.15 at the 99th percentile; the arm relaxes in ~1/lr ~ 2k steps, so 1000 burn-in + 5000 draws.
def test_normal_crossing_11_matches_its_tempered_posterior():
    nbeta, gamma = 30.0, 1.0
    hp = dict(nbeta=nbeta, localization=gamma, lr=6e-4, chains=256, burnin=1000, draws=5000)
    model, data, loss_fn = problem = normal_crossing_problem([1, 1], seed=SEED)
    c = float(data[0].square().mean())  # L_n = c w1^2 w2^2 with c = mean x^2 over the data
    target = normal_crossing_estimand([1, 1], nbeta, gamma, scale=c)
    result = run_case(problem, hp, seed=SEED)
    print("\n" + describe("normal crossing [1, 1] vs its tempered posterior", target, result, target="E[nbeta L]"))
    assert result.diagnostics.chains_ok == hp["chains"]
    rel = (result.llc_mean - target) / target
    assert abs(rel) <= 0.07, f"λ̂ {result.llc_mean:.4f} vs exact E[nβ L] {target:.4f}: {rel:+.1%}"


# ----------------------------------------------------------------------------------------------------------
# the exact-posterior oracle: the sampler's error and the estimand's bias, separately, for every crossing

# At finite nβ, λ̂ estimates E[nβ L] under p(w) ∝ exp(-nβ L - γ/2 |w|^2), not λ. normal_crossing_estimand
# computes that estimand by 2-D quadrature (to ~1e-14), so λ̂ - estimand is the sampler's error alone and
# estimand - λ the estimand's own bias. At nβ = 100, γ = 1 the bias is -29% ([1,1]), -3% ([0,2]), -18% ([1,2]),
# -41% ([2,2]), -48% ([3,3]) (at γ = 0.01: -12.5%, -0%, -1%, -14%, -15%), while SGLD reads within 3% of the
# estimand: readings far below λ (devinterp's -35% / -38% at [2,2] / [3,3]) are the estimand's bias, not a
# sampler error. γ = 1 bounds the arms (|w| <~ 3), so that the chains can equilibrate in a few thousand steps.
# lr: h = the largest eigenvalue of U's Hessian; its mean and 99th percentile under the exact posterior (grid in
# log w) are [1,1] 121 / 896, [0,2] 40 / 184, [1,2] 67 / 865, [2,2] 34 / 348, [3,3] 27 / 364. lr is the largest
# round value with mean lr·h <= 0.05 and 99th percentile <= 0.3 (see the module docstring).
# burn-in: the slowest mode is the pull γ along the arms, relaxing in 1/(lr·γ) steps (3.3k at lr 3e-4, 1.25k at
# 8e-4); 2.5 of those. Measured (1024 chains, running means in windows): within ~2% of the estimand from lr·γ·t ~ 1
# on. [0,2]: the active coordinate relaxes in 1/(lr·h) ~ 25 steps; the free one does not enter L.
# chains: 1024, vmapped: a step costs the same as for 256 here (measured 0.45-0.7 ms on a loaded core for 64 to
# 2048 chains), and the per-chain λ̂ is noisy (the arm positions decorrelate only in ~1/(lr·γ) steps), so many
# chains buy the s.e. (~1%) that a 5% tolerance needs. They cost in the diagnostics instead: R-hat and ESS rank
# all chains × draws, which takes as long as the sampling at 1024 chains.
# Measured, sgld, seeds 0-3, λ̂ vs the estimand (per-chain noise streams): [1,1] +1.0..+1.6%, [0,2] -0.7..+3.5%,
# [1,2] +0.2..+1.6%, [2,2] -2.8..+1.4%, [3,3] -4.0..+1.5% (s.e. 0.9-1.5%); rmsprop seed 0: -4.4..+0.3%.
ORACLE_NB, ORACLE_GAMMA = 100.0, 1.0
ORACLE_CASES = [
    pytest.param([1, 1], dict(lr=3e-4, burnin=8000, draws=5000), id="k=1,1"),
    # one active coordinate, fast to mix: 256 chains give a s.e. ~1%
    pytest.param([0, 2], dict(lr=1e-3, burnin=1000, draws=3000, chains=256), id="k=0,2"),
    pytest.param([1, 2], dict(lr=3e-4, burnin=8000, draws=5000), id="k=1,2"),
    pytest.param([2, 2], dict(lr=8e-4, burnin=3000, draws=4000), id="k=2,2"),
    pytest.param([3, 3], dict(lr=8e-4, burnin=3000, draws=4000), id="k=3,3"),
]
ORACLE_TOL = 0.05  # |λ̂ - estimand| / estimand
SAMPLERS = ["sgld", "rmsprop"]  # the samplers (SGLDConfig.sampler) held to the oracle
RMSPROP_LR_DIVISOR = 10


def oracle_hp(sampler: str, case_hp: dict) -> dict:
    """The one place the oracle's settings are made. The lr of the cases is plain SGLD's; another sampler scales it
    here to its own step (RMSProp: lr / G, G ≈ 1/(rmsprop_eps + sqrt V), as test_regular.py does)."""
    hp = dict(nbeta=ORACLE_NB, localization=ORACLE_GAMMA, chains=1024) | case_hp
    if sampler == "rmsprop":  # G ≈ 1/rmsprop_eps = 10 where the gradients are small (along the arms)
        hp.update(sampler=sampler, lr=hp["lr"] / RMSPROP_LR_DIVISOR)
    return hp


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("ks, case_hp", ORACLE_CASES)
def test_normal_crossing_matches_its_exact_posterior(ks, case_hp, sampler, record_property):
    hp = oracle_hp(sampler, case_hp)
    model, data, loss_fn = problem = normal_crossing_problem(ks, seed=SEED)
    c = float(data[0].square().mean())  # the sampler targets L_n = c prod w_i^2k_i, c = mean x^2 over the data
    estimand = normal_crossing_estimand(ks, ORACLE_NB, ORACLE_GAMMA, scale=c)
    lam = normal_crossing_learning_coefficient(ks)
    result = run_case(problem, hp, seed=SEED)
    err_estimand = (result.llc_mean - estimand) / estimand  # the sampler's error
    err_lam = (result.llc_mean - lam) / lam  # what a user comparing λ̂ to λ sees: mostly the estimand's bias
    print("\n" + describe(f"normal crossing {ks}, {sampler}, vs its exact posterior", estimand, result,
                          target="E[nbeta L]"))
    print(f"  lambda_hat={result.llc_mean:.4f} +- {result.llc_se:.4f} estimand={estimand:.4f} lambda={lam:.4f} | "
          f"lambda_hat vs estimand {err_estimand:+.1%}, vs lambda {err_lam:+.1%}, estimand vs lambda "
          f"{(estimand - lam) / lam:+.1%}")
    record_property("lambda", lam)
    record_property("estimand", estimand)
    record_property("lambda_hat", result.llc_mean)
    assert result.diagnostics.chains_ok == hp["chains"], result.diagnostics.reasons  # no chain diverged
    assert abs(err_estimand) <= ORACLE_TOL, f"{ks} {sampler}: λ̂ = {result.llc_mean:.4f}, estimand " \
                                            f"{estimand:.4f}: {err_estimand:+.1%} (λ = {lam:.4f})"


def test_an_ever_adapting_preconditioner_misses_the_exact_posterior():
    """Why RMSProp's G is frozen after burn-in: adapted for the whole run (rmsprop_freeze=False, devinterp's way),
    the same chains read 13-32% above the estimand of every crossing (measured; [2,2]: +22%), frozen within 2.2%."""
    ks, case_hp = ORACLE_CASES[3].values  # [2, 2]
    hp = oracle_hp("rmsprop", case_hp)
    model, data, loss_fn = problem = normal_crossing_problem(ks, seed=SEED)
    estimand = normal_crossing_estimand(ks, ORACLE_NB, ORACLE_GAMMA, scale=float(data[0].square().mean()))
    adapting = run_case(problem, dict(hp, rmsprop_freeze=False), seed=SEED)
    print("\n" + describe(f"normal crossing {ks}, rmsprop adapting throughout", estimand, adapting,
                          target="E[nbeta L]"))
    assert adapting.llc_mean > 1.10 * estimand
