"""Closed-form learning coefficients, used as ground truth for the LLC estimator.

The learning coefficient (real log canonical threshold) lambda is known exactly
for only a handful of models. The ones implemented here:

* regular models: lambda = d / 2;
* monomial and normal-crossing potentials, where K(w) is already in the normal
  form that resolution of singularities would produce;
* reduced rank regression, i.e. a linear network with one hidden layer
  (Aoyagi & Watanabe 2005);
* deep linear networks of any depth (Aoyagi 2024), which contains the previous
  case as L = 2;
* and, for normal crossings, the finite-temperature estimand E[nbeta L] that
  lambda_hat estimates at a finite nbeta (by quadrature, not in closed form).

All of these are *global* coefficients: the minimum of the local coefficient
over the whole set of true parameters. The local learning coefficient at one
particular true parameter can be larger. For linear networks the two agree when
the true product matrix has full rank r = min(widths): then the true parameter
set is a single smooth orbit and every point of it looks the same. For lower
ranks, compare an LLC estimate to these values only as a lower bound, or at
true parameters that are known to be the most singular ones.

Exact rational arithmetic (fractions.Fraction) is used internally so that the
parity corrections come out exactly; results are returned as floats.
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Sequence

# -----------------------------------------------------------------------------
# input checking


def _ints(values: Sequence[int], name: str) -> list[int]:
    # operator.index rejects floats like 2.5 instead of silently truncating
    try:
        return [operator.index(v) for v in values]
    except TypeError as e:
        raise TypeError(f"{name} must be a sequence of integers, got {values!r}") from e


# -----------------------------------------------------------------------------
# regular and normal-crossing models


def regular_learning_coefficient(d: int) -> float:
    """Learning coefficient of a regular model with d parameters."""
    d = operator.index(d)
    if d < 0:
        raise ValueError(f"number of parameters must be >= 0, got {d}")
    # Fisher information is positive definite, so K is locally quadratic (Watanabe 2009, AGSLT)
    return d / 2


def monomial_learning_coefficient(powers: Sequence[int]) -> float:
    """Learning coefficient of K(w) = 1/2 * sum_i w_i^{p_i}, each p_i even and >= 2."""
    powers = _ints(powers, "powers")
    if len(powers) == 0:
        raise ValueError("powers must be non-empty")
    for p in powers:
        # odd powers would make K negative somewhere, so K would not be a KL divergence
        if p < 2 or p % 2 != 0:
            raise ValueError(f"every power must be an even integer >= 2, got {powers}")
    # a sum of independent monomials: the volume scaling exponents add (Watanabe 2009, normal crossing form)
    return float(sum(Fraction(1, p) for p in powers))


def normal_crossing_learning_coefficient(ks: Sequence[int]) -> float:
    """Learning coefficient of the model f(x, w) = x * prod_i w_i^{k_i}.

    The potential is K(w) proportional to prod_i w_i^{2 k_i}, a normal crossing
    with the prior density ~1 at the origin, so lambda = min_i (1 / (2 k_i)) over
    the k_i > 0. Coordinates with k_i = 0 are free and do not change lambda.
    """
    ks = _ints(ks, "ks")
    if len(ks) == 0:
        raise ValueError("ks must be non-empty")
    if min(ks) < 0:
        raise ValueError(f"every exponent must be >= 0, got {ks}")
    if max(ks) == 0:
        # f does not depend on w at all, so every w is true and lambda = 0 is degenerate
        raise ValueError(f"at least one exponent must be positive (model is constant), got {ks}")
    # lambda = min_j (h_j + 1) / (2 k_j) with h_j = 0 for a uniform prior (Watanabe 2009, normal crossing form)
    return 1.0 / (2 * max(ks))


# -----------------------------------------------------------------------------
# the finite-temperature estimand of a normal crossing


def normal_crossing_estimand(ks: Sequence[int], nbeta: float, localization: float, scale: float = 1.0,
                             epsrel: float = 1e-10) -> float:
    """E_p[nbeta L(w)] under p(w) ∝ exp(-nbeta L(w) - localization/2 |w|^2), L(w) = scale * prod_i w_i^{2 k_i}.

    The estimand of lambda_hat at a finite (nbeta, localization), w* = 0: what an exact sampler would return.
    For the model f(x, w) = x prod_i w_i^{k_i}, x ~ N(0, 1), target 0, MSE, L is the population loss with
    scale = E[x^2] = 1 (scale = mean x^2 for an empirical L_n). It tends to lambda as nbeta -> infinity, for a
    crossing of multiplicity 2 only like 1 / log nbeta. Coordinates with k_i = 0 factor out of p; at most two
    k_i may be positive (2-D quadrature, nested scipy.integrate.quad). With one, localization may be 0 (then
    the answer is 1 / (2k) at every nbeta); with two it must be > 0, or the crossing's arms hold infinite mass.

    Accuracy: ~1e-14 relative. Over ks up to [3, 3], nbeta 1e-2 .. 1e8, localization 1e-4 .. 1e2 the result
    moved by < 4e-15 relative from epsrel 1e-10 to 1e-13, and from these integration ranges to wider ones
    (T = 20, log w1 from 10 lower to 1.2 higher); it matches the closed form of [1, 1] (Bessel functions, see
    tests/engine/test_closed_forms.py) to 1e-12 and a 1-D quadrature of [1, k] to 1e-10. ~0.05 s a call.
    """
    from scipy import integrate  # imported here: scipy.integrate is not needed to import the package

    ks = _ints(ks, "ks")
    normal_crossing_learning_coefficient(ks)  # the same checks on ks
    active = [k for k in ks if k > 0]
    if len(active) > 2:
        raise ValueError(f"at most two positive exponents are supported (2-D quadrature), got {ks}")
    a, g = float(nbeta) * float(scale), float(localization)
    if not (a > 0 and math.isfinite(a)):
        raise ValueError(f"nbeta * scale must be a finite number > 0, got {a}")
    if not (g >= 0 and math.isfinite(g)) or (g == 0 and len(active) == 2):
        raise ValueError(f"localization must be finite and >= 0 (> 0 with two positive exponents), got {g}")

    def quad(f, lo, hi, **kw) -> float:
        return integrate.quad(f, lo, hi, epsabs=0, epsrel=epsrel, **kw)[0]

    T = 10.0

    def inner(P: float, k: int) -> tuple[float, float]:
        # (Z, Z E[P w^2k]) for the 1-D density exp(-P w^2k - g/2 w^2) on w >= 0. In w = s t with
        # s = (P + (g/2)^k)^(-1/2k) it is exp(-A t^2k - B t^2) with A + B^k = 1: one length scale, and for
        # t >= 1 below exp(-t^2 / 2) (A >= 1/2 or B >= 1/2), so t in [0, T] misses < e^-50 of it, wherever w
        # sits on the crossing's arms (where the width across the arm shrinks with the distance along it)
        s = (P + (g / 2) ** k) ** (-1 / (2 * k))
        A, B = P * s ** (2 * k), g / 2 * s * s
        z = quad(lambda t: math.exp(-A * t ** (2 * k) - B * t * t), 0, T, limit=200)
        e = quad(lambda t: A * t ** (2 * k) * math.exp(-A * t ** (2 * k) - B * t * t), 0, T, limit=200)
        return s * z, s * e

    # lambda_hat = nbeta (E[L(w)] - L(w*)) over this p, L(w*) = 0 here (Lau et al. 2023, arXiv 2308.12108)
    if len(active) == 1:
        z, e = inner(a, active[0])
        return e / z

    k1, k2 = active
    # outer coordinate w1 >= 0 (p is even in each w_i) in v = log w1: the w1 marginal is flat in w1 below
    # the knee where a w1^2k1 = (g/2)^k2 and falls like w1^(-k1/k2) above it (flat in v for k1 = k2: the
    # log-long arm) until the Gaussian cut at w1 ~ g^-1/2, so in v the integrand is smooth, with no peak of
    # width nbeta^(-1/2k1) to miss. Below v_lo it is < e^-40 of its size at the knee.
    v_knee = (k2 * math.log(g / 2) - math.log(a)) / (2 * k1)
    v_cut = 0.5 * math.log(2 * 50 / g)  # exp(-g w1^2 / 2) = e^-50
    v_lo, v_hi = min(v_knee, v_cut) - 40, v_cut
    pts = [v for v in (v_knee, -0.5 * math.log(g)) if v_lo < v < v_hi]

    def outer(v: float, which: int) -> float:
        w1 = math.exp(v)
        return w1 * math.exp(-g * w1 * w1 / 2) * inner(a * w1 ** (2 * k1), k2)[which]

    z, e = (quad(outer, v_lo, v_hi, args=(which,), points=pts, limit=400) for which in (0, 1))
    return e / z


# -----------------------------------------------------------------------------
# reduced rank regression: y = B A x, A: H x M, B: N x H


def reduced_rank_regression_learning_coefficient(M: int, N: int, H: int, r: int) -> float:
    """Learning coefficient of reduced rank regression (one-hidden-layer linear net).

    M: input dimension, N: output dimension, H: hidden width, r: rank of the
    true matrix, 0 <= r <= min(M, N, H).
    """
    M, N, H, r = (operator.index(v) for v in (M, N, H, r))
    if min(M, N, H) < 1:
        raise ValueError(f"M, N, H must be positive, got M={M}, N={N}, H={H}")
    if not 0 <= r <= min(M, N, H):
        raise ValueError(f"true rank must satisfy 0 <= r <= min(M, N, H) = {min(M, N, H)}, got {r}")

    # the four cases of Aoyagi & Watanabe 2005, Neural Networks 18, Main Theorem.
    # Cases 2-4 are mutually exclusive (any two together would force r > H, M or N).
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        # case 1: no dimension dominates; the +1 is the parity correction
        lam = Fraction(2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2, 8)
        if (M + H + N + r) % 2 == 1:
            lam += Fraction(1, 8)
    elif M + H < N + r:
        # case 2: output is wide, the model behaves like its input side
        lam = Fraction(H * M - H * r + N * r, 2)
    elif N + H < M + r:
        # case 3: the transpose of case 2
        lam = Fraction(H * N - H * r + M * r, 2)
    else:
        # case 4: M + N < H + r, hidden layer too wide to be a bottleneck
        lam = Fraction(M * N, 2)
    return float(lam)


# -----------------------------------------------------------------------------
# deep linear networks: f(x) = W_L ... W_1 x, W_l: H_l x H_{l-1}


def dln_parameter_count(widths: Sequence[int]) -> int:
    """Number of parameters of a bias-free deep linear network with these widths."""
    widths = _ints(widths, "widths")
    if len(widths) < 2:
        raise ValueError(f"need at least 2 widths (input and output), got {widths}")
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def _check_dln(widths: Sequence[int], rank: int) -> tuple[list[int], int]:
    widths = _ints(widths, "widths")
    rank = operator.index(rank)
    if len(widths) < 2:
        raise ValueError(f"need at least 2 widths (input and output), got {widths}")
    if min(widths) < 1:
        raise ValueError(f"all widths must be positive, got {widths}")
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank must satisfy 0 <= rank <= min(widths) = {min(widths)}, got {rank}")
    return widths, rank


def _dln_bottleneck(excess: list[int]) -> list[int]:
    """The subset Sigma of Aoyagi 2024 main theorem, as indices into `excess` (M_l = H_l - r).

    Sigma = {s_0..s_ell} must satisfy, with complement C:
      max(Sigma) < min(C),  sum(Sigma) >= ell * max(Sigma),  sum(Sigma) < ell * min(C).
    Sigma is always a prefix of the sorted M's. Scanning prefixes in order, the
    second condition for a prefix of size ell+1 is exactly the failure of the
    third for size ell, so the first prefix passing the third condition (or the
    whole list) is the answer, and the strict first condition then holds too.
    """
    order = sorted(range(len(excess)), key=lambda i: excess[i])
    vals = [excess[i] for i in order]
    # ell = 0 is impossible: it would need M_{s_0} < 0, i.e. rank > some width
    for ell in range(1, len(vals) - 1):
        if sum(vals[: ell + 1]) < ell * vals[ell + 1]:
            return order[: ell + 1]
    return order


def dln_learning_coefficient(widths: Sequence[int], rank: int) -> float:
    """Global learning coefficient of a bias-free deep linear network.

    widths = [H_0 (input), H_1, ..., H_L (output)], the network is W_L ... W_1
    with W_l of shape [H_l, H_{l-1}], and `rank` is the rank r of the true
    product matrix. For L = 1 this returns H_0 * H_1 / 2 for every rank (a
    single linear layer is a regular model); for L = 2 it agrees with
    reduced_rank_regression_learning_coefficient.
    """
    widths, r = _check_dln(widths, rank)
    # Aoyagi 2024 (Neural Networks, main theorem); same form as Lau et al. 2023 (arXiv 2308.12108) App. and
    # edmundlth/validating_lambdahat dln.py. The rank-r part is regular; only the excesses M_l = H_l - r
    # of the layers that form the bottleneck contribute singular structure.
    excess = [h - r for h in widths]
    sigma = [excess[i] for i in _dln_bottleneck(excess)]
    ell = len(sigma) - 1
    total = sum(sigma)
    big_m = -(-total // ell)  # ceil(total / ell), exact for ints
    a = total - (big_m - 1) * ell  # 1 <= a <= ell; a == ell exactly when ell divides total

    lam = Fraction(-r * r + r * (widths[0] + widths[-1]), 2)
    lam += Fraction(a * (ell - a), 4 * ell)  # parity correction, vanishes when ell | total
    lam -= Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
    lam += Fraction(sum(sigma[i] * sigma[j] for i in range(ell + 1) for j in range(i + 1, ell + 1)), 2)
    return float(lam)


__all__ = [
    "regular_learning_coefficient",
    "monomial_learning_coefficient",
    "normal_crossing_learning_coefficient",
    "normal_crossing_estimand",
    "reduced_rank_regression_learning_coefficient",
    "dln_parameter_count",
    "dln_learning_coefficient",
]

