"""Validation of λ̂ on a regular model: full-rank linear regression, λ = d/2
(slt_probe.engine.closed_forms.regular_learning_coefficient), and the refined λ̂ of half its weights.

y = W x with W: 4 x 3 (d = 12, no bias), x ~ N(0, I_3), noiseless targets from a random W*, MSE averaged
over samples and outputs, sampled around W* itself. L_n(W) = 1/4 tr((W - W*) Σ_n (W - W*)^T), so the Hessian
of L_n is Σ_n / 2 per output row (eigenvalues ~0.5 for n = 4096) and that of U = nβ L_n + γ/2 |W - W*|² is
h ≈ nβ/2 + γ in every direction. For this Gaussian target everything is known in closed form:
  E[λ̂] = d/2 · 1/(1 + 2γ/nβ) (localization, exact) · 1/(1 - lr·h/4) (ULA stationary variance, exact).
"""

import math
from dataclasses import replace

import pytest
import torch
from potentials import PointModel, describe, linear_regression_problem, run_case, sgld_config

from slt_probe import estimate_llc
from slt_probe.engine.closed_forms import regular_learning_coefficient
from slt_probe.engine.estimate import estimate_components
from slt_probe.engine.sampler import Coordinates

SEED = 0
D_OUT, D_IN = 4, 3

# nβ = 1000: any value works for a regular model (λ̂ = d/2 at every nβ as γ, lr -> 0); what matters is the
#   products below. h = nβ/2 = 500 is the curvature of U in every direction.
# lr = 1e-4: lr·h = 0.05, so the ULA bias 1/(1 - lr·h/4) - 1 is +1.3%; relaxation time 1/(lr·h) = 20 steps.
# γ = 1: γ/h = 0.2%, i.e. a -0.2% bias; only a safety net here (no flat directions).
# burn-in 200 = 10 relaxation times from W* (where the chain starts, the variance must grow to its value);
# draws 1000 = 50 relaxation times per chain; 256 chains (vmapped, nearly free) give a s.e. ~0.5%.
HP = dict(nbeta=1000.0, lr=1e-4, localization=1.0, chains=256, burnin=200, draws=1000)
# RMSProp (sampler "rmsprop"): G = 1/(0.1 + sqrt(V)) ≈ 8 here (the gradients are ~0.03), so ε/8 keeps the step
# G·ε·h the same; the preconditioner adapts during the 200 burn-in steps and is then frozen.
HP_RMSPROP = dict(HP, lr=1.25e-5, sampler="rmsprop")


@pytest.mark.parametrize("hp", [HP, HP_RMSPROP], ids=["sgld", "rmsprop"])
def test_full_rank_linear_regression_lambda_is_half_the_parameter_count(hp):
    problem = linear_regression_problem(D_OUT, D_IN, seed=SEED)
    d = D_OUT * D_IN
    lam = regular_learning_coefficient(d)
    result = run_case(problem, hp, seed=SEED)
    print("\n" + describe(f"linear regression {D_OUT}x{D_IN}, {hp.get('sampler', 'sgld')}", lam, result))
    # the closed-form finite-(nβ, γ, lr) expectation of plain SGLD, for the log: ~ +1.1% above d/2
    h = HP["nbeta"] / 2 + HP["localization"]
    expected = lam / (1 + 2 * HP["localization"] / HP["nbeta"]) / (1 - HP["lr"] * h / 4)
    print(f"  closed-form ULA expectation at the SGLD settings: {expected:.4f} ({(expected - lam) / lam:+.1%})")

    assert math.isfinite(result.llc_mean)
    assert result.diagnostics.chains_ok == hp["chains"]
    assert abs(result.llc_mean - lam) <= 0.10 * lam, f"λ̂ {result.llc_mean:.4f} not within 10% of d/2 = {lam}"
    assert result.verdict != "fail", result.diagnostics.reasons


class SplitRegression(torch.nn.Module):
    """The same W, held as two parameters: rows 0-1 (`a`) and rows 2-3 (`b`)."""

    def __init__(self, w_star: torch.Tensor):
        super().__init__()
        W = w_star.view(D_OUT, D_IN)
        self.a = torch.nn.Parameter(W[:2].clone())
        self.b = torch.nn.Parameter(W[2:].clone())


def test_the_refined_llc_of_half_the_weights_is_half_their_count():
    """Sampling only `a` (6 of the 12 weights; b stays at W*): the loss is still quadratic in a with a positive
    definite Hessian, so the refined λ (Wang et al. 2024) is 6/2 = 3, the closed form for d = 6."""
    point, data, _ = linear_regression_problem(D_OUT, D_IN, seed=SEED)
    model = SplitRegression(point.w.detach())

    def loss_fn(m, batch):
        xb, yb = batch  # [B, d_in], [B, d_out]
        return (xb @ torch.cat([m.a, m.b]).T - yb).square().mean()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = estimate_llc(model, data, loss_fn=loss_fn, config=sgld_config(SEED, **HP, params=r"^a$"))
        with pytest.raises(ValueError, match="matches none of the model's parameters"):
            estimate_llc(model, data, loss_fn=loss_fn, config=sgld_config(SEED, **HP, params="^c$"))
    finally:
        torch.set_num_threads(threads)
    lam = regular_learning_coefficient(6)
    print("\n" + describe("linear regression, refined to 6 of 12 weights", lam, result))
    assert result.num_params == 6
    assert abs(result.llc_mean - lam) <= 0.10 * lam, f"λ̂ {result.llc_mean:.4f} not within 10% of 6/2 = {lam}"
    assert result.verdict != "fail", result.diagnostics.reasons


def test_the_refined_llc_of_some_coordinates_is_half_their_count_alone_or_batched():
    """Coordinates, not whole tensors (a head's rows of a fused matrix): a checkerboard of W's 12 entries (6) and one
    row with one more entry (4), sampled one at a time and as two groups of one run (estimate_components). The loss
    stays quadratic with a positive definite Hessian in any subset: λ = k/2. Batched, each group draws the noise of
    its own run, so the two ways agree to rounding."""
    model, data, loss_fn = linear_regression_problem(D_OUT, D_IN, seed=SEED)
    (name, w), = model.named_parameters()
    checker = (torch.arange(w.numel()) % 2 == 0).reshape(w.shape)
    row = torch.zeros(w.numel(), dtype=torch.bool)
    row[[0, 1, 2, 5]] = True
    parts = {"checker": Coordinates({name: checker}, "checkerboard"),
             "row": Coordinates({name: row.reshape(w.shape)}, "a row and one more")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = sgld_config(SEED, **HP)
        alone = {k: estimate_llc(model, data, loss_fn=loss_fn, config=replace(config, params=p)) for k, p in parts.items()}
        batched = estimate_components(model, data, parts, loss_fn=loss_fn, config=config)
    finally:
        torch.set_num_threads(threads)
    for key, k in (("checker", 6), ("row", 4)):
        lam = regular_learning_coefficient(k)
        print("\n" + describe(f"linear regression, refined to {k} coordinates", lam, batched[key]))
        assert alone[key].num_params == batched[key].num_params == k
        assert abs(batched[key].llc_mean - lam) <= 0.10 * lam, f"λ̂ {batched[key].llc_mean:.4f} not within 10% of {lam}"
        assert batched[key].llc_mean == pytest.approx(alone[key].llc_mean, rel=1e-5)
        assert batched[key].verdict != "fail", batched[key].diagnostics.reasons


def badly_scaled_regression(scales=(10.0, 1.0, 0.1), d_out=2, n=20_000, seed=0):
    """y = W x with input features of very different scales: the loss's curvature along the weights of feature i
    is ∝ scales[i]², here 1e4 apart, as the weights of a transformer's embeddings, LayerNorm gains and attention
    differ. Still regular: λ = d/2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(scales), generator=g) * torch.tensor(scales)  # [n, d_in]
    w_star = torch.randn(d_out, len(scales), generator=g)
    y = x @ w_star.T

    def loss_fn(model, batch):
        xb, yb = batch
        return (xb @ model.w.view(d_out, len(scales)).T - yb).square().mean()

    return PointModel(w_star.reshape(-1)), (x, y), loss_fn


def test_rmsprop_equilibrates_where_one_step_size_cannot():
    """One ε for every weight must suit the stiffest (curvature nβ·h ≈ 1e5: ε ≲ 1e-6), and then the flattest
    (nβ·h ≈ 10) relaxes in 1/(ε·10) = 1e5 steps: in 3500 steps SGLD reads far below d/2, and R-hat says the chains
    have not mixed. RMSProp's per-weight step equilibrates both: within 10% of d/2 = 3, with the same budget."""
    problem = badly_scaled_regression()
    lam = regular_learning_coefficient(6)
    common = dict(nbeta=1000.0, localization=0.01, chains=64, burnin=1000, draws=2500)
    sgld = run_case(problem, dict(common, lr=1e-6))
    rms = run_case(problem, dict(common, lr=1e-6, sampler="rmsprop", rmsprop_eps=1e-3))
    print("\n" + describe("badly scaled regression, sgld", lam, sgld) + "\n" + describe("  rmsprop", lam, rms))
    assert abs(rms.llc_mean - lam) <= 0.10 * lam and rms.diagnostics.chains_ok == common["chains"]
    assert sgld.llc_mean < 0.75 * lam  # what the preconditioner buys
