"""Tests for the closed-form learning coefficients in slt_probe.engine.closed_forms."""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, special

from slt_probe.engine.closed_forms import (
    dln_learning_coefficient,
    dln_parameter_count,
    monomial_learning_coefficient,
    normal_crossing_estimand,
    normal_crossing_learning_coefficient,
    reduced_rank_regression_learning_coefficient,
    regular_learning_coefficient,
)

# every network with 1..3 layers and widths 1..4; small so the whole file runs in well under a second
SMALL_DLN_WIDTHS = [ws for L in range(1, 4) for ws in itertools.product(range(1, 5), repeat=L + 1)]


# -----------------------------------------------------------------------------
# regular / monomial / normal crossing


@pytest.mark.parametrize("d", [0, 1, 2, 7, 1000])
def test_regular(d):
    assert regular_learning_coefficient(d) == d / 2


def test_regular_rejects_negative():
    with pytest.raises(ValueError):
        regular_learning_coefficient(-1)


@pytest.mark.parametrize(
    "powers, expected",
    [([2], 0.5), ([2, 2, 2], 1.5), ([4], 0.25), ([2, 4], 0.75), ([2, 4, 6], 0.5 + 0.25 + 1 / 6)],
)
def test_monomial(powers, expected):
    assert monomial_learning_coefficient(powers) == pytest.approx(expected, rel=1e-15)


def test_monomial_all_quadratic_is_regular():
    for d in range(1, 6):
        assert monomial_learning_coefficient([2] * d) == regular_learning_coefficient(d)


@pytest.mark.parametrize("powers", [[], [0], [1], [3], [2, 5], [-2]])
def test_monomial_rejects_invalid(powers):
    with pytest.raises(ValueError):
        monomial_learning_coefficient(powers)


@pytest.mark.parametrize(
    "ks, expected",
    [
        ([0, 1], 0.5),
        ([1, 1], 0.5),
        ([0, 2], 0.25),
        ([1, 2], 0.25),
        ([0, 3], 1 / 6),
        ([2, 2], 0.25),
        ([3, 3], 1 / 6),
        ([1], 0.5),
        ([1, 1, 1, 1], 0.5),
    ],
)
def test_normal_crossing(ks, expected):
    assert normal_crossing_learning_coefficient(ks) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("ks", [[], [0], [0, 0], [1, -1]])
def test_normal_crossing_rejects_invalid(ks):
    with pytest.raises(ValueError):
        normal_crossing_learning_coefficient(ks)


def test_non_integer_inputs_rejected():
    with pytest.raises(TypeError):
        monomial_learning_coefficient([2.5])
    with pytest.raises(TypeError):
        dln_learning_coefficient([2.0, 3], 1)


# -----------------------------------------------------------------------------
# the finite-temperature estimand E[nbeta L] of a normal crossing, against answers found without the 2-D quadrature


@pytest.mark.parametrize("ks", [[1], [0, 1], [1, 0, 0]])
@pytest.mark.parametrize("nbeta, gamma, scale", [(100.0, 1.0, 1.0), (30.0, 0.01, 0.98), (0.5, 10.0, 2.0)])
def test_estimand_of_a_quadratic_is_the_gaussian_one(ks, nbeta, gamma, scale):
    # L = c w^2: p is Gaussian with precision 2 nbeta c + gamma, so E[nbeta c w^2] = nbeta c / (2 nbeta c + gamma)
    a = nbeta * scale
    assert normal_crossing_estimand(ks, nbeta, gamma, scale=scale) == pytest.approx(a / (2 * a + gamma), rel=1e-12)


@pytest.mark.parametrize("ks", [[1], [0, 2], [3, 0], [0, 0, 4]])
@pytest.mark.parametrize("nbeta", [1e-3, 1.0, 100.0, 1e6])
def test_estimand_of_one_coordinate_is_lambda_without_localization(ks, nbeta):
    # nbeta w^2k is homogeneous: w -> t^(1/2k) w shows nbeta E[L] = 1/(2k) at every nbeta when gamma = 0
    lam = normal_crossing_learning_coefficient(ks)
    assert normal_crossing_estimand(ks, nbeta, 0.0) == pytest.approx(lam, rel=1e-12)
    # and it approaches that from below as gamma -> 0 (the Gaussian pull shortens the flat w^2k well)
    assert lam * (1 - 1e-3) < normal_crossing_estimand(ks, nbeta, 1e-6 * nbeta ** (1 / max(ks))) < lam


def crossing_11_closed_form(a, gamma):
    # Given w1, w2 is Gaussian (precision 2 a w1^2 + gamma): Z(a) ∝ a^-1/2 e^z K0(z), z = gamma^2 / (8 a), from
    # ∫_0^∞ e^{-p x^2} (x^2 + q)^{-1/2} dx = e^{pq/2} K0(pq/2) / 2 (x = sqrt(q) sinh(t/2) turns it into
    # K0(z) = ∫_0^∞ e^{-z cosh t} dt), so E[a w1^2 w2^2] = -a d log Z / da = 1/2 + z (1 - K1(z) / K0(z)).
    # k1e / k0e: the e^z factors cancel.
    z = gamma**2 / (8 * a)
    return 0.5 + z * (1 - special.k1e(z) / special.k0e(z))


@pytest.mark.parametrize("nbeta", [1.0, 30.0, 100.0, 1e4, 1e8])
@pytest.mark.parametrize("gamma", [0.01, 1.0, 10.0])
def test_estimand_of_crossing_11_matches_its_closed_form(nbeta, gamma):
    expected = crossing_11_closed_form(nbeta, gamma)
    assert normal_crossing_estimand([1, 1], nbeta, gamma) == pytest.approx(expected, rel=1e-12)


def test_estimand_of_crossing_11_approaches_lambda_like_one_over_log():
    # multiplicity 2: 1/2 - E = 1 / K0(z) + O(z) -> 1 / (log(16 nbeta / gamma^2) - Euler's gamma), slowly
    for nbeta in [1e6, 1e9, 1e12]:
        deficit = 0.5 - normal_crossing_estimand([1, 1], nbeta, 1.0)
        assert deficit == pytest.approx(1 / (math.log(16 * nbeta) - np.euler_gamma), rel=1e-5)


def crossing_1k_by_1d_quadrature(k, a, gamma):
    # the route of the helper this replaced ([1, 1] only): given w2, w1 is Gaussian with precision
    # P = 2 a w2^2k + gamma, so E[a w1^2 w2^2k | w2] = a w2^2k / P, and w2 has density ∝ e^{-gamma w2^2/2} P^-1/2
    def P(w):
        return 2 * a * w ** (2 * k) + gamma

    def weight(w):
        return math.exp(-gamma * w * w / 2) / math.sqrt(P(w))

    knee = (gamma / (2 * a)) ** (1 / (2 * k))
    tail = 12 / math.sqrt(gamma)
    pts = [p for p in (knee, 10 * knee, 100 * knee) if p < tail]
    num = integrate.quad(lambda w: weight(w) * a * w ** (2 * k) / P(w), 0, tail, points=pts, limit=400, epsabs=0)[0]
    den = integrate.quad(weight, 0, tail, points=pts, limit=400, epsabs=0)[0]
    return num / den


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("nbeta, gamma", [(100.0, 1.0), (1e4, 0.01), (3.0, 5.0)])
def test_estimand_of_crossing_1k_matches_a_1d_quadrature(k, nbeta, gamma):
    expected = crossing_1k_by_1d_quadrature(k, nbeta, gamma)
    assert normal_crossing_estimand([1, k], nbeta, gamma) == pytest.approx(expected, rel=1e-10)
    assert normal_crossing_estimand([k, 1], nbeta, gamma) == pytest.approx(expected, rel=1e-10)  # the other orientation


@pytest.mark.parametrize("ks", [[1, 1], [1, 2], [2, 2], [2, 3], [3, 3]])
def test_estimand_invariances(ks):
    base = normal_crossing_estimand(ks, 100.0, 1.0)
    # the coordinates can be swapped, and free ones (k = 0) added
    assert normal_crossing_estimand(ks[::-1], 100.0, 1.0) == pytest.approx(base, rel=1e-10)
    assert normal_crossing_estimand([0] + ks + [0], 100.0, 1.0) == pytest.approx(base, rel=1e-10)
    # only nbeta * scale enters, and w -> w / sqrt(gamma) maps (nbeta, gamma) to (nbeta gamma^-(k1 + k2), 1)
    assert normal_crossing_estimand(ks, 50.0, 1.0, scale=2.0) == pytest.approx(base, rel=1e-10)
    g = 0.01
    assert normal_crossing_estimand(ks, 100.0 * g ** sum(ks), g) == pytest.approx(base, rel=1e-10)
    # below lambda, and closer to it at a larger nbeta or a weaker localization
    lam = normal_crossing_learning_coefficient(ks)
    assert base < normal_crossing_estimand(ks, 1e4, 1.0) < lam
    assert base < normal_crossing_estimand(ks, 100.0, 0.1) < lam


@pytest.mark.parametrize(
    "ks, nbeta, gamma, scale",
    [([1, 1, 1], 100.0, 1.0, 1.0), ([1, 1], 100.0, 0.0, 1.0), ([1], 0.0, 1.0, 1.0), ([1], 100.0, -1.0, 1.0),
     ([1], 100.0, 1.0, -1.0), ([1], math.inf, 1.0, 1.0), ([0, 0], 100.0, 1.0, 1.0), ([1, -1], 100.0, 1.0, 1.0)],
)
def test_estimand_rejects_invalid(ks, nbeta, gamma, scale):
    with pytest.raises(ValueError):
        normal_crossing_estimand(ks, nbeta, gamma, scale=scale)


# -----------------------------------------------------------------------------
# reduced rank regression


@pytest.mark.parametrize(
    "M, N, H, r, expected",
    [
        # case 1, even parity: (2*4*4 - 0 - 16) / 8
        (2, 2, 2, 0, 1.5),
        # case 1, odd parity: (2*1*2 - 0 - 1 + 1) / 8, the same as x*w1*w2 (normal crossing)
        (1, 1, 1, 0, 0.5),
        # case 1, odd parity: (2*3*6 - 0 - 9 + 1) / 8
        (3, 3, 3, 0, 3.5),
        # case 2 (M + H < N + r): (1*1 - 1*1 + 4*1) / 2
        (1, 4, 1, 1, 2.0),
        # case 3 (N + H < M + r): transpose of the above
        (4, 1, 1, 1, 2.0),
        # case 4 (M + N < H + r): wide hidden layer, regular in the product
        (1, 1, 3, 1, 0.5),
        (2, 3, 10, 0, 3.0),
    ],
)
def test_rrr_hand_computed(M, N, H, r, expected):
    assert reduced_rank_regression_learning_coefficient(M, N, H, r) == expected


def test_rrr_full_rank_hidden_bottleneck():
    # r = H <= min(M, N): the true set is a GL(H) orbit, so lambda = (H(M+N) - H^2) / 2
    for M, N in itertools.product(range(1, 6), repeat=2):
        for H in range(1, min(M, N) + 1):
            expected = (H * (M + N) - H * H) / 2
            assert reduced_rank_regression_learning_coefficient(M, N, H, H) == expected


def test_rrr_symmetric_in_input_output():
    for M, N, H in itertools.product(range(1, 6), repeat=3):
        for r in range(min(M, N, H) + 1):
            assert reduced_rank_regression_learning_coefficient(
                M, N, H, r
            ) == reduced_rank_regression_learning_coefficient(N, M, H, r)


@pytest.mark.parametrize("args", [(0, 1, 1, 0), (1, 1, 1, 2), (3, 3, 2, 3), (2, 2, 2, -1)])
def test_rrr_rejects_invalid(args):
    with pytest.raises(ValueError):
        reduced_rank_regression_learning_coefficient(*args)


# -----------------------------------------------------------------------------
# deep linear networks


def test_dln_parameter_count():
    assert dln_parameter_count([3, 4]) == 12
    assert dln_parameter_count([3, 4, 5]) == 12 + 20
    assert dln_parameter_count([1, 1, 1, 1]) == 3
    with pytest.raises(ValueError):
        dln_parameter_count([3])


def test_dln_one_hidden_layer_matches_reduced_rank_regression():
    # The main correctness check: two independent closed forms agree on every small case.
    for M, N, H in itertools.product(range(1, 7), repeat=3):
        for r in range(min(M, N, H) + 1):
            assert dln_learning_coefficient([M, H, N], r) == reduced_rank_regression_learning_coefficient(
                M, N, H, r
            ), (M, H, N, r)


def test_dln_single_layer_is_regular_at_every_rank():
    # y = W x is linear in W, hence regular: lambda = d/2 whatever the true rank
    for M, N in itertools.product(range(1, 7), repeat=2):
        for r in range(min(M, N) + 1):
            assert dln_learning_coefficient([M, N], r) == M * N / 2


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_dln_scalar_chain(depth):
    widths = [1] * (depth + 1)
    # f = x * w_1 ... w_L with true product 0: K ~ prod w_i^2, a normal crossing
    assert dln_learning_coefficient(widths, 0) == normal_crossing_learning_coefficient([1] * depth) == 0.5
    # true product nonzero: {w_1 ... w_L = c} is a smooth hypersurface, codimension 1
    assert dln_learning_coefficient(widths, 1) == 0.5


@pytest.mark.parametrize(
    "widths, rank, expected",
    [
        # M = [1,1,1,1], Sigma = all, ell = 3, sum = 4: a = 1 -> 1/6 - 8/3 + 3
        ([1, 1, 1, 1], 0, 0.5),
        # M = [2,2,2,2], ell = 3, sum = 8: a = 2 -> 2/12 - 32/3 + 12
        ([2, 2, 2, 2], 0, 1.5),
        # M = [4,0,4]: Sigma = all, ell = 2, sum = 8, a = 2 -> 4.5 + 0 - 8 + 8; codim of {a b^T = C}
        ([5, 1, 5], 1, 4.5),
        # M = [1,1,3,3]: Sigma = {1,1} (2 < 1*3), ell = 1 -> 0 + 0 - 0 + 1/2
        ([1, 3, 1, 3], 0, 0.5),
    ],
)
def test_dln_hand_computed(widths, rank, expected):
    assert dln_learning_coefficient(widths, rank) == pytest.approx(expected, abs=1e-12)


def _product_jacobian_rank(widths, rng):
    """Rank of d vec(W_L ... W_1) / d params at random weights (generic, so product rank = min(widths))."""
    Ws = [rng.standard_normal((widths[i + 1], widths[i])) for i in range(len(widths) - 1)]
    columns = []
    for l, W in enumerate(Ws):
        # d(A E B) = A dE B with A = W_L..W_{l+1}, B = W_{l-1}..W_1
        A = np.eye(widths[l + 1])
        for Wk in Ws[l + 1 :]:
            A = Wk @ A
        B = np.eye(widths[0])
        for Wk in Ws[:l]:
            B = Wk @ B
        for i, j in np.ndindex(W.shape):
            columns.append(np.outer(A[:, i], B[j, :]).ravel())
    return np.linalg.matrix_rank(np.stack(columns, axis=1))


def test_dln_full_rank_matches_jacobian_rank():
    # Independent check of Aoyagi's formula at r = min(widths): there the product map has constant
    # rank k near the true set, so K is Morse-Bott with k nondegenerate directions and lambda = k/2.
    rng = np.random.default_rng(0)
    for widths in SMALL_DLN_WIDTHS:
        k = _product_jacobian_rank(widths, rng)
        assert dln_learning_coefficient(widths, min(widths)) == k / 2, widths


def test_dln_invariances():
    for widths in SMALL_DLN_WIDTHS:
        d = dln_parameter_count(widths)
        values = []
        for r in range(min(widths) + 1):
            lam = dln_learning_coefficient(widths, r)
            values.append(lam)
            # singular models are never more complex than regular ones
            assert 0 < lam <= d / 2
            # transposing the network (reversing the widths) gives the same model class
            assert lam == dln_learning_coefficient(widths[::-1], r)
        # a higher-rank truth is never simpler (checked on this grid)
        assert values == sorted(values), widths


def test_dln_non_bottleneck_layer_changes_nothing():
    # A hidden layer wider than the sum of all widths never enters the bottleneck set Sigma,
    # and lambda depends only on Sigma and the end widths.
    for widths in SMALL_DLN_WIDTHS:
        wide = sum(widths) + 1
        for pos in range(1, len(widths)):
            bigger = list(widths[:pos]) + [wide] + list(widths[pos:])
            for r in range(min(widths) + 1):
                assert dln_learning_coefficient(bigger, r) == dln_learning_coefficient(widths, r)


def test_dln_interior_order_does_not_matter():
    # Aoyagi's lambda depends on the hidden widths only through their multiset
    for widths in SMALL_DLN_WIDTHS:
        if len(widths) < 4:
            continue
        inner = widths[1:-1]
        for perm in set(itertools.permutations(inner)):
            permuted = [widths[0], *perm, widths[-1]]
            assert dln_learning_coefficient(permuted, 0) == dln_learning_coefficient(widths, 0)


@pytest.mark.parametrize(
    "widths, rank",
    [([3], 0), ([], 0), ([3, 0, 2], 0), ([3, -1], 0), ([3, 4], -1), ([3, 4, 2], 3)],
)
def test_dln_rejects_invalid(widths, rank):
    with pytest.raises(ValueError):
        dln_learning_coefficient(widths, rank)
