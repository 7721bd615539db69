"""Residual operators: at discretisation level on the solvers' own output, large otherwise."""

import math
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from sciffusion.physics import darcy_residual, divergence, vorticity_residual
from sciffusion.systems import DarcyFlow, KolmogorovFlow
from sciffusion.systems.darcy import darcy_matrix


def test_darcy_residual_equals_the_assembled_sparse_operator():
    a, _ = DarcyFlow(n=12, kind="lognormal").sample(1, seed=0)
    u = np.random.default_rng(0).standard_normal((12, 12))
    u[0] = u[-1] = u[:, 0] = u[:, -1] = 0
    r = darcy_residual(torch.tensor(a[0]), torch.tensor(u), f=0.0).numpy()
    np.testing.assert_allclose(r[1:-1, 1:-1].ravel(), darcy_matrix(a[0]) @ u[1:-1, 1:-1].ravel(), rtol=1e-12)


def test_darcy_residual_gradient_matches_the_adjoint_of_the_operator():
    """d/du ||A u||^2 = 2 A^T A u (interior), through autograd."""
    a, _ = DarcyFlow(n=10, kind="lognormal").sample(1, seed=1)
    u = torch.zeros(10, 10, dtype=torch.float64)
    u[1:-1, 1:-1] = torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u.requires_grad_(True)
    (g,) = torch.autograd.grad(darcy_residual(torch.tensor(a[0]), u, f=0.0).pow(2).sum(), u)
    m = darcy_matrix(a[0])
    expected = 2 * m.T @ (m @ u.detach()[1:-1, 1:-1].numpy().ravel())
    np.testing.assert_allclose(g[1:-1, 1:-1].numpy().ravel(), expected, rtol=1e-10)


def test_darcy_residual_flags_nonzero_boundary_values():
    a = torch.full((8, 8), 2.0, dtype=torch.float64)
    u = torch.zeros(8, 8, dtype=torch.float64)
    u[0, 3] = 1.0
    assert darcy_residual(a, u, f=0.0)[0, 3] == 1.0


@pytest.fixture(scope="module")
def kolmogorov_trajectories():
    s = KolmogorovFlow(n=32, reynolds=100.0, dt=0.005)
    w = s.step(3.0 * s.random_field(1, torch.Generator().manual_seed(0)), 100)
    fine = s.integrate(w, 8, 2)  # every 0.01
    return s, fine


def test_vorticity_residual_of_solver_output_is_second_order_in_the_sampling_step(kolmogorov_trajectories):
    s, fine = kolmogorov_trajectories
    kw = {"reynolds": 100.0, "drag": 0.1, "k_forcing": 4}
    r_fine = vorticity_residual(fine[:, 2:7], 0.01, **kw)[:, 1]  # at t = 0.04, dt = 0.01
    r_coarse = vorticity_residual(fine[:, 0:9:2], 0.02, **kw)[:, 1]  # at t = 0.04, dt = 0.02
    scale = float(s.tendency(fine[:, 4]).abs().max())
    assert float(r_fine.abs().max()) < 1e-3 * scale
    ratio = float(r_coarse.abs().max() / r_fine.abs().max())
    assert 3.5 < ratio < 4.5


def test_vorticity_residual_detects_the_wrong_reynolds_number(kolmogorov_trajectories):
    _, fine = kolmogorov_trajectories
    right = vorticity_residual(fine, 0.01, reynolds=100.0).abs().max()
    wrong = vorticity_residual(fine, 0.01, reynolds=50.0).abs().max()
    assert wrong > 100 * right


def test_spectral_divergence_of_solver_velocity_is_round_off(kolmogorov_trajectories):
    s, fine = kolmogorov_trajectories
    u, v = s.velocity(fine[:, -1])
    assert float(divergence(u, v).abs().max()) < 1e-12 * float(u.abs().max())


def test_central_divergence_is_second_order_on_an_analytic_field():
    errs = []
    for n in (16, 32):
        x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        yy, xx = torch.meshgrid(x, x, indexing="ij")
        u, v = torch.sin(xx) * torch.cos(yy), torch.sin(2 * yy)
        exact = torch.cos(xx) * torch.cos(yy) + 2 * torch.cos(2 * yy)
        torch.testing.assert_close(divergence(u, v), exact, atol=1e-12, rtol=0)
        errs.append(float((divergence(u, v, method="central") - exact).abs().max()))
    assert 1.9 < math.log2(errs[0] / errs[1]) < 2.1


@pytest.mark.skipif(find_spec("torch_harmonics") is None, reason="needs torch-harmonics (--no-deps install)")
def test_sphere_divergence_of_shallow_water_winds_converges_at_second_order():
    """Lat-lon centred divergence of the solver's (u, v) -> its spectral divergence, error ~ h^2 (|lat| <= 60)."""
    from sciffusion.physics import sphere_divergence
    from sciffusion.systems import ShallowWater

    errs = []
    for n in (32, 64):
        sw = ShallowWater(nlat=n + 1, nlon=2 * n)
        x = torch.zeros(1, 3, sw.lmax, sw.lmax, dtype=torch.complex128)
        g = torch.Generator().manual_seed(1)
        for c in (1, 2):  # smooth random vorticity and divergence, l = 1..4 (no l = 0 mode)
            x[0, c, 1:5, :5] = torch.tril(1e-6 * torch.randn(4, 5, generator=g, dtype=torch.float64), diagonal=1)
        f = sw.fields(x)
        lat = torch.tensor(sw.coords()["lat"].values)
        band = lat[1:-1].abs() <= 60
        d = sphere_divergence(f["u"], f["v"], lat)[..., band, :]
        exact = f["divergence"][..., 1:-1, :][..., band, :]
        errs.append(float((d - exact).abs().max() / exact.abs().max()))
    assert errs[1] < 0.01
    assert 3.0 < errs[0] / errs[1] < 5.0


def test_darcy_solve_equals_the_systems_solver_and_zeroes_the_residual():
    """Batched with a leading axis and a field forcing: the same u as DarcyFlow's SuperLU solve."""
    from sciffusion.physics import darcy_solve
    from sciffusion.systems.darcy import solve_darcy

    a, _ = DarcyFlow(n=16).sample(4, seed=3)  # thresholded {3, 12}
    f = 1.0 + np.random.default_rng(0).random((16, 16))
    u = darcy_solve(torch.tensor(a).reshape(2, 2, 16, 16), torch.tensor(f))
    assert u.shape == (2, 2, 16, 16) and u.dtype == torch.float64
    np.testing.assert_allclose(u.reshape(4, 16, 16).numpy(), solve_darcy(a, f), rtol=1e-12, atol=1e-15)
    assert float(darcy_residual(torch.tensor(a), u.reshape(4, 16, 16), torch.tensor(f)).abs().max()) < 1e-9


def test_darcy_solve_gradient_is_the_adjoint_of_the_solve():
    """Adjoint backward pass against central finite differences (torch.autograd.gradcheck)."""
    from sciffusion.physics import darcy_solve

    a, _ = DarcyFlow(n=7, kind="lognormal").sample(2, seed=4)
    x = torch.tensor(a).requires_grad_(True)
    w = torch.randn(2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda z: (darcy_solve(z) * w).sum(), (x,), eps=1e-6, atol=1e-9)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_darcy_solve_refuses_a_nonpositive_coefficient(bad):
    from sciffusion.physics import darcy_solve

    a = torch.full((6, 6), 2.0, dtype=torch.float64)
    a[2, 3] = bad
    with pytest.raises(ValueError, match="a \\(coefficient\\)"):
        darcy_solve(a)
