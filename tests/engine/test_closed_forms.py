"""Tests for the closed-form learning coefficients in slt_probe.engine.closed_forms."""

import itertools

import numpy as np
import pytest

from slt_probe.engine.closed_forms import (
    dln_learning_coefficient,
    dln_parameter_count,
    monomial_learning_coefficient,
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
