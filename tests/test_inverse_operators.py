"""Forward operators and the observation model of sciffusion.inverse."""

import math

import pytest
import torch

from sciffusion.inverse import Coarsen, Compose, Linear, Mask, Observation, Operator, SparseSensors, as_operator


def _explicit_matrix(op, event_shape):
    """Rows of A by applying the operator to unit vectors (A is linear)."""
    n = math.prod(event_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *event_shape)
    return op(eye).reshape(n, -1).T


def test_mask_sensors_coarsen_linear_compute_what_they_say():
    x = torch.arange(2 * 4 * 4, dtype=torch.float64).reshape(1, 2, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[1, 2, 3] = mask[0, 0, 1] = True
    assert Mask(mask)(x).tolist() == [[1.0, 27.0]]
    sensors = SparseSensors((4, 4), points=[[2, 3], [0, 1]], channels=[1])
    assert sensors(x).tolist() == [[[27.0, 17.0]]]
    coarse = Coarsen(2)(x)
    assert coarse.shape == (1, 2, 2, 2)
    assert float(coarse[0, 0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)
    m = torch.randn(3, 32, dtype=torch.float64)
    torch.testing.assert_close(Linear(m)(x), x.reshape(1, -1) @ m.T)


def test_random_sensors_are_seeded_distinct_and_sized_by_fraction():
    a = SparseSensors((64, 64), fraction=0.03, seed=1)
    b = SparseSensors((64, 64), fraction=0.03, seed=1)
    c = SparseSensors((64, 64), fraction=0.03, seed=2)
    assert len(a.points) == round(0.03 * 64 * 64)
    assert torch.equal(a.points, b.points) and not torch.equal(a.points, c.points)
    assert len(torch.unique(a.flat_index)) == len(a.flat_index) and a.diagonal_gram


def test_compose_applies_in_order_and_matmul_is_function_composition():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    m = torch.randn(5, 16, dtype=torch.float64)
    comp = Compose(Coarsen(2), Linear(m))
    torch.testing.assert_close(comp(x), Linear(m)(Coarsen(2)(x)))
    torch.testing.assert_close((Linear(m) @ Coarsen(2))(x), comp(x))
    assert comp.linear


@pytest.mark.parametrize("make", [
    lambda: Mask(torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5),
    lambda: SparseSensors((4, 4), num=5, seed=3),
    lambda: Coarsen(2),
    lambda: Linear(torch.randn(4, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)),
])
def test_gram_diag_and_diagonal_gram_match_the_explicit_matrix(make):
    """diag(A A^T) of each built-in equals the generic autograd computation and the explicit matrix;
    operators flagged diagonal_gram really have a diagonal A A^T (PiGDM relies on it)."""
    op = make()
    a = _explicit_matrix(op, (2, 4, 4))
    gram = a @ a.T
    torch.testing.assert_close(op.gram_diag((2, 4, 4)).reshape(-1), torch.diagonal(gram))
    torch.testing.assert_close(Operator.gram_diag(op, (2, 4, 4)).reshape(-1), torch.diagonal(gram))
    if op.diagonal_gram:
        torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)))


def test_nan_in_y_is_ignored_not_propagated():
    """The likelihood with a NaN entry equals the likelihood of the operator without that row."""
    m = torch.randn(4, 6, dtype=torch.float64)
    y = torch.randn(4, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    y_nan = y.clone()
    y_nan[2] = float("nan")
    full = Observation(Linear(m), y_nan, torch.tensor([0.1, 0.2, 0.3, 0.4]), (6,))
    keep = [0, 1, 3]
    reduced = Observation(Linear(m[keep]), y[keep], torch.tensor([0.1, 0.2, 0.4]), (6,))
    ll = full.log_likelihood(x)
    assert torch.isfinite(ll).all()
    torch.testing.assert_close(ll, reduced.log_likelihood(x))


def test_noise_std_per_channel_per_point_and_scalar():
    sensors = SparseSensors((8, 8), num=5, seed=0)
    y = torch.zeros(2, 5)
    per_channel = Observation(sensors, y, [0.1, 0.5], (2, 8, 8))
    assert per_channel.std[0].tolist() == pytest.approx([0.1] * 5) and per_channel.std[1].tolist() == pytest.approx([0.5] * 5)
    per_point = Observation(sensors, y, torch.full((2, 5), 0.3), (2, 8, 8))
    assert torch.allclose(per_point.std, torch.tensor(0.3, dtype=torch.float64))
    scalar = Observation(sensors, y, 0.2, (2, 8, 8))
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 0.2).log_prob(-sensors(x)).sum()
    torch.testing.assert_close(scalar.log_likelihood(x)[0], expected)


def test_bad_observations_are_named():
    with pytest.raises(ValueError, match="y has shape"):
        Observation(Mask(torch.ones(4, dtype=torch.bool)), torch.zeros(3), 0.1, (4,))
    with pytest.raises(ValueError, match="noise_std"):
        Observation(Mask(torch.ones(4, dtype=torch.bool)), torch.zeros(4), 0.0, (4,))
    with pytest.raises(ValueError, match="noise_std"):
        Observation(Mask(torch.ones(4, dtype=torch.bool)), torch.zeros(4), [0.1, 0.2], (4,))
    Observation(Mask(torch.ones(4, dtype=torch.bool)), torch.zeros(4), 0.0, (4,), positive=False)
    with pytest.raises(ValueError, match="fraction"):
        SparseSensors((4, 4), fraction=1.5)
    with pytest.raises(TypeError, match="operator"):
        as_operator(3)
