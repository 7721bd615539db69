"""The DiffusionPDE task suite: Poisson / Helmholtz (DST solves) and Navier-Stokes on the unit torus.

Every check compares with a closed form or an independent solve: the discrete eigenvalue relation,
second-order convergence to a continuum solution, a sparse direct solve of the published matrix,
exact viscous decay of a Fourier mode, the exact forced shear solution and the energy budget.
"""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from sciffusion.inverse.residual import polyak_step
from sciffusion.physics import (HelmholtzProjection, HelmholtzResidual, NavierStokesProjection, NavierStokesResidual,
                                helmholtz_residual, helmholtz_solve, solve_helmholtz)
from sciffusion.systems import (Helmholtz, NavierStokes, NavierStokesFlow, Poisson, observation_points, observe,
                                simulate, torus_grf)


def nodes(n):
    x = np.linspace(0.0, 1.0, n)
    return np.meshgrid(x, x, indexing="ij")


@pytest.mark.parametrize("k", [0.0, 1.0, 4.0])
def test_eigenfunction_solve_reproduces_the_discrete_eigenvalue_exactly(k):
    n = 33
    h = 1.0 / (n - 1)
    x, y = nodes(n)
    phi = np.sin(np.pi * x) * np.sin(np.pi * y)
    phi[[0, -1]], phi[:, [0, -1]] = 0.0, 0.0
    lam = -4.0 / h**2 * np.sin(np.pi * h / 2) ** 2  # the five-point eigenvalue of sin(pi x) per axis
    a = (2 * lam + k**2) * phi
    assert np.abs(solve_helmholtz(a, k) - phi).max() < 1e-13
    assert float((helmholtz_solve(torch.tensor(a), k) - torch.tensor(phi)).abs().max()) < 1e-13


@pytest.mark.parametrize("k", [0.0, 1.0])
def test_continuum_error_is_second_order(k):
    """u = p(x) p(y), p(t) = t (1 - t) e^t: lap u = p''(x) p(y) + p(x) p''(y), p'' = -(3t + t^2) e^t."""
    errors = []
    for n in (17, 33, 65):
        x, y = nodes(n)
        p, pxx = x * (1 - x) * np.exp(x), -(3 * x + x**2) * np.exp(x)
        q, qyy = y * (1 - y) * np.exp(y), -(3 * y + y**2) * np.exp(y)
        u = p * q
        errors.append(np.abs(solve_helmholtz(pxx * q + p * qyy + k**2 * u, k) - u).max())
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3.8) & (ratios < 4.2)), ratios


def published_matrix(n, k):
    """DiffusionPDE's Helmholtz matrix (generate_inhom_helmholtz.m): kron of 1-D second differences
    with identity rows on the boundary, plus k^2 I; its boundary block forces u = 0 there."""
    h = 1.0 / (n - 1)
    lap = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n)).tolil() / h**2
    lap[0, :], lap[-1, :] = 0.0, 0.0
    lap[0, 0], lap[-1, -1] = 1.0, 1.0
    eye = sp.eye(n)
    return (sp.kron(eye, lap) + sp.kron(lap, eye) + k**2 * sp.eye(n * n)).tocsc()


@pytest.mark.parametrize("k", [0.0, 1.0])
def test_dst_solves_equal_a_sparse_direct_solve_of_the_published_matrix(k):
    n = 20
    a = np.random.default_rng(0).standard_normal((2, n, n))
    a[:, [0, -1]], a[:, :, [0, -1]] = 0.0, 0.0
    ref = np.stack([spla.spsolve(published_matrix(n, k), f.ravel()).reshape(n, n) for f in a])
    scale = np.abs(ref).max()
    assert np.abs(solve_helmholtz(a, k) - ref).max() < 1e-12 * scale
    assert float((helmholtz_solve(torch.tensor(a), k) - torch.tensor(ref)).abs().max()) < 1e-12 * scale


def test_residual_is_round_off_on_solver_output_and_the_stencil_on_a_perturbation():
    n, k = 16, 1.0
    a, u = Helmholtz(n=n, k=k).sample(2, seed=3)
    a, u = torch.tensor(a), torch.tensor(u)
    r = helmholtz_residual(a, u, k)
    assert float(r.abs().max()) < 1e-12 * float(a.abs().max())
    du = torch.zeros_like(u)
    du[0, 5, 7] = 1e-3
    r = helmholtz_residual(a, u + du, k)
    h2 = (n - 1) ** 2
    assert float(r[0, 5, 7]) == pytest.approx(1e-3 * (k**2 - 4 * h2), rel=1e-8)
    assert float(r[0, 4, 7]) == pytest.approx(1e-3 * h2, rel=1e-8)
    assert float(r[1].abs().max()) < 1e-10
    du = torch.zeros_like(u)
    du[1, 0, 3] = 0.5  # a boundary value: the Dirichlet row of the residual is u itself
    assert float(helmholtz_residual(a, u + du, k)[1, 0, 3]) == 0.5


def test_gradients_flow_through_the_solve_the_residual_and_the_flow_map():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: helmholtz_solve(a, 1.0), (a,))
    assert torch.autograd.gradcheck(lambda a, u: helmholtz_residual(a, u, 1.0), (a, u))
    flow = NavierStokesFlow(n=8, viscosity=1e-2, dt=0.05)
    w0 = torch.randn(1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: flow.solve(w, 0.1), (w0,))


def test_residual_guidance_and_projection_on_normalised_joint_fields():
    mean, std = (0.1, -0.002), (2.0, 0.03)
    a, u = Poisson(n=16).sample(2, seed=1)
    x = torch.stack([(torch.tensor(a) - mean[0]) / std[0], (torch.tensor(u) - mean[1]) / std[1]], dim=1)
    res = HelmholtzResidual(mean, std, k=0.0)
    assert float(res(x).abs().max()) < 1e-10
    proj = HelmholtzProjection(mean, std, k=0.0)
    x_bad = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    assert float(res(x_bad).abs().max()) > 1.0
    assert float(res(proj(x_bad)).abs().max()) < 1e-10
    assert float(proj.violation(proj(x_bad)).max()) < 1e-14 < float(proj.violation(x_bad).min())
    step = polyak_step(res, x_bad)  # the ResidualGuidance step: finite and lowering the residual
    assert torch.isfinite(step).all()
    assert float(res(x_bad - step).norm()) < float(res(x_bad).norm())


def test_navier_stokes_pair_residual_is_zero_on_solver_output():
    ns = NavierStokes(n=16, dt=0.05)
    w0, wt = ns.sample(2, seed=0)
    x = torch.stack([torch.tensor(w0), torch.tensor(wt)], dim=1)
    res = NavierStokesResidual(ns.flow, time=ns.time)
    assert float(res(x).abs().max()) < 1e-13
    x[:, 1] += 0.01
    assert float(res(x).abs().max()) == pytest.approx(0.01, rel=1e-9)
    proj = NavierStokesProjection(ns.flow, time=ns.time)
    assert float(proj.violation(proj(x)).max()) < 1e-13


def test_single_fourier_mode_decays_at_exactly_the_viscous_rate():
    nu, t = 1e-2, 1.0
    flow = NavierStokesFlow(n=32, viscosity=nu, amplitude=0.0, dt=0.05)
    x = torch.arange(32, dtype=torch.float64) / 32
    w0 = torch.cos(2 * math.pi * (3 * x[None, :] + 2 * x[:, None]))[None]
    w = flow.solve(w0, t)
    assert float((w - w0 * math.exp(-nu * (2 * math.pi) ** 2 * 13 * t)).abs().max()) < 1e-13


def test_forced_shear_mode_is_the_exact_transient_and_steady_solution():
    """f depends on x + y only, so psi is proportional to w and advection vanishes:
    w(t) = f / (8 pi^2 nu) (1 - exp(-8 pi^2 nu t)) from rest, and f / (8 pi^2 nu) is steady."""
    nu = 1e-3
    flow = NavierStokesFlow(n=32, viscosity=nu)
    rate = 8 * math.pi**2 * nu
    steady = flow.forcing[None] / rate
    w = flow.solve(torch.zeros(1, 32, 32, dtype=torch.float64), 1.0)
    assert float((w - steady * (1 - math.exp(-rate))).abs().max()) < 1e-13
    assert float((flow.solve(steady, 1.0) - steady).abs().max()) < 1e-13


def test_energy_budget_closes_on_a_turbulent_state():
    flow = NavierStokesFlow(n=32, dt=1e-3)
    w = flow.solve(torus_grf(32, torch.Generator().manual_seed(0), 2), 0.5)
    budget = flow.energy_budget(flow.advance(w, 5))  # the midpoint of [w, advance(w, 10)]
    de_dt = (flow.energy_budget(flow.advance(w, 10))["energy"] - flow.energy_budget(w)["energy"]) / 0.01
    rhs = budget["injection"] - budget["dissipation"]
    scale = budget["injection"].abs() + budget["dissipation"]
    assert bool(((de_dt - rhs).abs() < 1e-5 * scale).all())  # centred difference: O(dt^2) = 2.5e-5 of the terms
    assert float(budget["dissipation"].min()) > 0


def cn_euler_flow(w0, nu, time, dt):
    """An independent integrator: the FNO generator's scheme (Crank-Nicolson viscous term, forward
    Euler advection, 2/3 mask on the product only), full complex FFTs, first order in dt."""
    n = w0.shape[-1]
    k = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)
    ky, kx = 2 * math.pi * k[:, None], 2 * math.pi * k[None, :]
    lap = kx**2 + ky**2
    mask = (k[:, None].abs() <= n / 3) & (k[None, :].abs() <= n / 3)
    x = torch.arange(n, dtype=torch.float64) / n
    f_h = torch.fft.fft2(0.1 * (torch.sin(2 * math.pi * (x[:, None] + x)) + torch.cos(2 * math.pi * (x[:, None] + x))))
    w_h = torch.fft.fft2(w0)
    for _ in range(round(time / dt)):
        psi = w_h / torch.where(lap > 0, lap, 1.0)
        u, v, wx, wy = (torch.fft.ifft2(1j * c * w).real for c, w in ((ky, psi), (-kx, psi), (kx, w_h), (ky, w_h)))
        adv = torch.fft.fft2(u * wx + v * wy) * mask
        w_h = (dt * (f_h - adv) + (1 - 0.5 * dt * nu * lap) * w_h) / (1 + 0.5 * dt * nu * lap)
    return torch.fft.ifft2(w_h).real


def test_flow_map_is_the_limit_of_the_published_first_order_scheme():
    """A strongly nonlinear state (10x the GRF): the CN/Euler scheme converges to the ETDRK4 map at
    first order (error halves with dt), so advection has the right sign, velocity and scaling."""
    flow = NavierStokesFlow(n=16, dt=0.01)
    w0 = 10 * torus_grf(16, torch.Generator().manual_seed(2), 1)
    w0 = torch.fft.irfft2(torch.fft.rfft2(w0) * flow.mask, s=(16, 16))
    ours = flow.solve(w0, 0.2)  # w0 de-aliased first: this solver drops the modes above n/3, FNO's keeps them
    errors = [float((cn_euler_flow(w0, 1e-3, 0.2, dt) - ours).norm() / ours.norm()) for dt in (2e-3, 1e-3)]
    assert 1.9 < errors[0] / errors[1] < 2.1 and errors[1] < 0.005, errors
    assert float((ours - w0).norm() / w0.norm()) > 20 * errors[1]  # the flow moved far more than that


def test_generators_are_reproducible_by_seed_and_member():
    for system in (Poisson(n=16), Helmholtz(n=16), NavierStokes(n=16, dt=0.05)):
        a, u = system.sample(3, seed=7)
        a2, u2 = system.sample(2, seed=7, start=1)
        np.testing.assert_array_equal(a[1:], a2)
        np.testing.assert_array_equal(u[1:], u2)
        assert not np.allclose(system.sample(1, seed=8)[0], a[:1])
    a, _ = Helmholtz(n=16).sample(1)
    assert not a[0, [0, -1]].any() and not a[0, :, [0, -1]].any()  # zero boundary source, as published


def test_both_resolutions_and_simulate():
    for n in (64, 128):
        a, u = Helmholtz(n=n).sample(1)
        assert a.shape == u.shape == (1, n, n)
        assert float(helmholtz_residual(torch.tensor(a), torch.tensor(u), 1.0).abs().max()) < 1e-9
    a, u = NavierStokes(n=64).sample(1)
    assert u.shape == (1, 64, 64) and np.isfinite(u).all()
    ds = simulate(Poisson(n=64), n_members=3, chunk_members=2, seed=4, progress=False)
    a, u = Poisson(n=64).sample(3, seed=4)
    np.testing.assert_array_equal(ds.u.values, u)
    assert ds.u.attrs["units"] == "1" and float(ds.x[-1]) == 1.0


def test_observation_points_are_diffusionpde_masks():
    np.random.seed(1)
    flat = np.random.choice(128**2, 500, replace=False)  # DiffusionPDE's random_index(500, 128, seed=1)
    pts = observation_points(128, "a")
    np.testing.assert_array_equal(pts, np.stack(np.unravel_index(flat, (128, 128)), axis=1))
    assert len(np.unique(pts[:, 0] * 128 + pts[:, 1])) == 500
    assert not np.array_equal(observation_points(128, "u"), pts)
    assert observation_points(64).shape == (125, 2)


def test_observations_are_exact_or_noisy_at_the_stated_level():
    system = Poisson(n=64)
    a, u = system.sample(2)
    task = system.observation_task(a, u, "inverse")
    assert task["observed"] == "u" and task["target"] == "a"
    np.testing.assert_array_equal(task["y"], u[:, task["points"][:, 0], task["points"][:, 1]])
    field = np.repeat(u[:1], 200, axis=0)
    y, std = observe(field, task["points"], noise=0.05)
    rms = np.sqrt((u[0] ** 2).mean())
    np.testing.assert_allclose(std, 0.05 * rms)
    err = (y - field[:, task["points"][:, 0], task["points"][:, 1]]) / std[:, None]
    assert abs(err.std() - 1) < 0.02 and abs(err.mean()) < 0.02


@pytest.mark.parametrize("make, match", [
    (lambda: Poisson(n=2), "n"),
    (lambda: Helmholtz(n=16, k=-1.0), "k"),
    (lambda: Helmholtz(n=3, k=math.sqrt(16.0)), "resonant"),
    (lambda: NavierStokes(n=33), "n"),
    (lambda: NavierStokesFlow(n=16, viscosity=-1e-3), "viscosity"),
    (lambda: NavierStokes(n=16, time=0.03), "time"),
    (lambda: solve_helmholtz(np.zeros((8, 9))), "a \\(source\\)"),
    (lambda: helmholtz_residual(torch.zeros(8, 8), torch.zeros(9, 9)), "a and u"),
    (lambda: NavierStokesFlow(n=16).solve(torch.zeros(1, 8, 8)), "w0"),
    (lambda: Poisson(n=8).observation_task(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), "sideways"), "task"),
    (lambda: observe(np.zeros((1, 8, 8)), np.zeros((1, 2), int), noise=-0.1), "noise"),
    (lambda: observation_points(8, "v"), "channel"),
])
def test_bad_input_raises_a_value_error_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_darcy_has_the_same_observation_tasks_as_the_rest_of_the_suite():
    """DarcyFlow.observation_task observes DiffusionPDE's nodes of the named channel and returns the
    other field as the target, exactly as the Poisson/Helmholtz systems do."""
    from sciffusion.systems import DarcyFlow, observation_points

    darcy = DarcyFlow(n=16)
    a, u = darcy.sample(2, seed=3)
    task = darcy.observation_task(a, u, "inverse")
    pts = observation_points(16, "u")
    np.testing.assert_array_equal(task["points"], pts)
    np.testing.assert_array_equal(task["y"], u[:, pts[:, 0], pts[:, 1]])
    np.testing.assert_array_equal(task["truth"], a)
    assert task["observed"] == "u" and task["target"] == "a" and not task["noise_std"].any()
    forward = darcy.observation_task(a, u, "forward", noise=0.1)
    assert forward["observed"] == "a" and np.allclose(forward["noise_std"], 0.1 * np.sqrt((a**2).mean(axis=(1, 2))))
