"""Darcy flow: solve accuracy (residual, manufactured-solution order) and the GRF recipe."""

import numpy as np
import pytest
import torch

from sciffusion.physics import darcy_residual
from sciffusion.systems import DarcyFlow, darcy_coefficient, gaussian_random_field, solve_darcy


def manufactured(n):
    """u = sin(pi x) sin(2 pi y) e^x, a = 2 + sin(2 pi x) cos(pi y), f = -div(a grad u) by hand."""
    g = np.linspace(0, 1, n)
    x, y = np.meshgrid(g, g)  # rows are y, columns x
    u = np.sin(np.pi * x) * np.sin(2 * np.pi * y) * np.exp(x)
    ux = (np.pi * np.cos(np.pi * x) + np.sin(np.pi * x)) * np.sin(2 * np.pi * y) * np.exp(x)
    uxx = (2 * np.pi * np.cos(np.pi * x) + (1 - np.pi**2) * np.sin(np.pi * x)) * np.sin(2 * np.pi * y) * np.exp(x)
    uy = 2 * np.pi * np.sin(np.pi * x) * np.cos(2 * np.pi * y) * np.exp(x)
    uyy = -4 * np.pi**2 * u
    a = 2 + np.sin(2 * np.pi * x) * np.cos(np.pi * y)
    ax = 2 * np.pi * np.cos(2 * np.pi * x) * np.cos(np.pi * y)
    ay = -np.pi * np.sin(2 * np.pi * x) * np.sin(np.pi * y)
    f = -(ax * ux + a * uxx + ay * uy + a * uyy)
    return a, f, u


def test_solve_converges_at_second_order_to_a_manufactured_solution():
    errs = []
    for n in (17, 33, 65):
        a, f, u = manufactured(n)
        errs.append(np.abs(solve_darcy(a, f) - u).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 1.85) & (orders < 2.15)), orders


@pytest.mark.parametrize("kind", ["threshold", "lognormal"])
def test_discrete_residual_of_the_solve_is_below_1e_8_relative(kind):
    a, u = DarcyFlow(n=32, kind=kind).sample(2, seed=3)
    r = darcy_residual(torch.tensor(a), torch.tensor(u))
    assert float(r.norm() / np.sqrt(2 * 30**2)) < 1e-8  # ||f|| per interior node is 1
    assert np.all(u[:, 0] == 0) and np.all(u[:, :, -1] == 0)
    assert 0.002 < u.max() < 0.2  # the usual Darcy benchmark scale (u_max ~ 0.01-0.08)


def test_threshold_coefficient_takes_exactly_the_two_values_in_balanced_proportion():
    a = darcy_coefficient(32, 8, kind="threshold", seed=0)
    assert set(np.unique(a)) == {3.0, 12.0}
    assert 0.3 < (a == 12).mean() < 0.7


def test_grf_pixel_variance_matches_the_spectral_covariance():
    """E[g^2] averaged over pixels = sum_{(k,l) != 0} tau^(2 alpha - 2) (pi^2 |k|^2 + tau^2)^(-alpha)."""
    n = 32
    g = gaussian_random_field(n, 40, alpha=2.0, tau=3.0, seed=1)
    k1, k2 = np.meshgrid(np.arange(n), np.arange(n))
    var = (3.0**2 * (np.pi**2 * (k1**2 + k2**2) + 9.0) ** -2.0)
    expected = var.sum() - var[0, 0]
    assert (g**2).mean() == pytest.approx(expected, rel=0.15)


def test_sample_k_is_the_same_draw_whatever_the_number_of_samples():
    a2, _ = DarcyFlow(n=16).sample(2, seed=7)
    a1, _ = DarcyFlow(n=16).sample(1, seed=7, start=1)
    np.testing.assert_array_equal(a2[1], a1[0])


def test_bad_coefficients_raise_errors_naming_them():
    with pytest.raises(ValueError, match="a \\(coefficient\\)"):
        solve_darcy(-np.ones((8, 8)))
    with pytest.raises(ValueError, match="kind"):
        DarcyFlow(kind="binary")
