"""Models with a known learning coefficient, as (model, data, loss_fn) triples for estimate_llc.

Shared by tests/validation/test_potentials.py and tests/validation/test_regular.py; a plain module, not a test file.

Every model is an nn.Module with a single parameter vector `w`, initialised at the true parameter w* (0
for the potentials, W* for the regression). The losses are data-dependent, like a real model's: inputs
x ~ N(0, I), noiseless targets, MSE. Their population versions are the potentials of slt_probe.engine.closed_forms,
and their empirical versions L_n have the same learning coefficient (see each builder).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from slt_probe import SGLDConfig, estimate_llc

N_SAMPLES = 4096  # dataset size n; the estimator only sees it through the minibatches


class PointModel(nn.Module):
    """A model that is nothing but its parameter vector w (shape [d]), initialised at w0."""

    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w0.detach().clone().float())


def _gaussian(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def monomial_problem(powers: Sequence[int], n: int = N_SAMPLES, seed: int = 0):
    """K(w) = 1/2 sum_i w_i^{p_i} (lambda = sum_i 1/p_i), as the regression f(x, w) = sum_i x_i w_i^{p_i/2}.

    x ~ N(0, I_k), target 0, loss 1/2 mean_b f(x_b, w)^2, so L(w) = 1/2 m^T Sigma m with m_i = w_i^{p_i/2}
    and Sigma = E[x x^T] = I in the population: exactly K. The empirical L_n has Sigma_n (positive
    definite) in place of I; it is still quasi-homogeneous (w_i -> t^{1/p_i} w_i multiplies it by t), so
    its learning coefficient is the same, and without localization nbeta E[L_n] = sum 1/p_i at every nbeta.
    """
    half = [p // 2 for p in powers]  # the exponents p_i / 2, as Python ints
    x = _gaussian((n, len(powers)), seed)  # [n, k]

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        (xb,) = batch  # [B, k]
        m = torch.stack([wi**h for wi, h in zip(model.w.unbind(), half)])  # [k]
        # 1/2 mean_b (x_b . m)^2 = 1/2 m^T S m with S = X^T X / B: the same number, computed so that the
        # batch-only part S is shared by all vmapped chains (halves the cost of a sampler step)
        S = xb.T @ xb / xb.shape[0]  # [k, k]
        return 0.5 * (m @ S @ m)

    return PointModel(torch.zeros(len(powers))), (x,), loss_fn


def normal_crossing_problem(ks: Sequence[int], n: int = N_SAMPLES, seed: int = 0):
    """f(x, w) = x * prod_i w_i^{k_i}, x ~ N(0, 1), target 0, MSE: L(w) = mean(x^2) prod_i w_i^{2 k_i}.

    lambda = 1 / (2 max k), with multiplicity m = the number of i attaining max k. Coordinates with
    k_i = 0 do not enter f at all (their gradient is exactly 0, not 0 * w^-1): only the localization
    keeps them bounded.
    """
    ks = list(ks)
    x = _gaussian((n,), seed)  # [n]

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        (xb,) = batch  # [B]
        g = None  # prod_i w_i^{k_i} over the k_i > 0
        for wi, k in zip(model.w.unbind(), ks):
            if k > 0:
                g = wi**k if g is None else g * wi**k
        # mean_b (x_b g)^2 = g^2 mean_b x_b^2: the same number, cheaper under vmap
        return g.square() * xb.square().mean()

    return PointModel(torch.zeros(len(ks))), (x,), loss_fn


def linear_regression_problem(d_out: int = 4, d_in: int = 3, n: int = N_SAMPLES, seed: int = 0):
    """y = W x with W: [d_out, d_in] (no bias), x ~ N(0, I), noiseless targets y = W* x, MSE (mean over
    samples and outputs). A regular model: L_n(W) = 1/d_out tr((W - W*) Sigma_n (W - W*)^T) has a positive
    definite Hessian, lambda = d / 2 with d = d_out * d_in. The model is initialised at W*.
    """
    w_star = _gaussian((d_out, d_in), seed + 1)  # [d_out, d_in]
    x = _gaussian((n, d_in), seed)  # [n, d_in]
    y = x @ w_star.T  # [n, d_out]

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        xb, yb = batch  # [B, d_in], [B, d_out]
        W = model.w.view(d_out, d_in)
        return (xb @ W.T - yb).square().mean()

    return PointModel(w_star.reshape(-1)), (x, y), loss_fn


# ----------------------------------------------------------------------------------------------------------
# running a case


def sgld_config(seed: int, **hp):
    """The sampler settings shared by every validation case; hp holds the per-case hyperparameters."""
    # vmap: one forward/backward for all chains. These models have 1-12 parameters, so a step costs about the
    # same Python overhead for 64 chains as for 256 (measured: ~0.35-0.4 ms/step on one core; 1024 chains
    # cost about twice that), while the loop path costs ~0.1 ms per chain-step. Many chains are therefore
    # nearly free and bring the standard error down instead of long chains.
    # cpu: the same numbers from run to run for a fixed seed, whatever accelerator the machine has.
    return SGLDConfig(seed=seed, method="vmap", device="cpu", batch_size=32, **hp)


def run_case(problem, hp: dict, seed: int = 0):
    """estimate_llc on (model, data, loss_fn) = problem with the case's hyperparameters."""
    model, data, loss_fn = problem
    # One intra-op thread: the tensors are tiny, so extra threads only add synchronisation, and on a loaded
    # machine an OpenMP barrier that waits for a busy core made the regression case 10-30x slower (measured:
    # 1.0 s with one thread, 9-30 s with two while another process held one of the two cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return estimate_llc(model, data, loss_fn=loss_fn, config=sgld_config(seed, **hp))
    finally:
        torch.set_num_threads(threads)


def describe(name: str, lam: float, result, target: str = "lambda") -> str:
    """One line for the test log: theory, estimate, relative error, verdict and its reasons."""
    c = result.config
    rel = (result.llc_mean - lam) / lam
    return (
        f"{name}: {target}={lam:.4f} lambda_hat={result.llc_mean:.4f} +- {result.llc_se:.4f} (s.e.) "
        f"rel.err={rel:+.1%} | nbeta={c.nbeta:g} lr={c.lr:g} gamma={c.localization:g} chains={c.chains} "
        f"burnin={c.burnin} draws={c.draws} | verdict={result.verdict} {result.diagnostics.reasons} "
        f"accept={result.diagnostics.acceptance:.3f} rhat={result.diagnostics.rhat:.3f} "
        f"ess={result.diagnostics.ess_bulk:.0f} | {result.seconds:.1f}s"
    )

