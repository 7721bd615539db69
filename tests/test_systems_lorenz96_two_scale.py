"""Two-scale Lorenz-96 truth and its stochastic one-scale forecast model (Arnold et al. 2013)."""

import numpy as np
import pytest
import torch

from sciffusion.systems import Lorenz96TwoScale, StochasticLorenz96, fit_closure, simulate
from sciffusion.systems.base import member_generator
from sciffusion.systems.lorenz96_two_scale import ARNOLD_2013


def test_inviscid_unforced_part_conserves_total_energy():
    """With F = 0 and the damping terms (-X, -cY) removed, advection and coupling conserve
    sum X^2 + sum Y^2 exactly: x . dx/dt = 0 to rounding, for random states."""
    sys = Lorenz96TwoScale(forcing=0.0)
    x = torch.randn(5, sys.state_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    damping = torch.cat([x[:, : sys.k], sys.c * x[:, sys.k :]], dim=-1)
    inviscid = sys.tendency(x) + damping
    power = (x * inviscid).sum(-1)
    assert power.abs().max() < 1e-12 * (x.norm(dim=-1) * inviscid.norm(dim=-1)).min()
    assert (x * sys.tendency(x)).sum(-1).lt(0).all()  # the damping does dissipate


def test_fitted_closure_and_noise_reproduce_arnold_2013_table():
    """The least-squares cubic closure and AR(1) residual of a short truth run (4 x 5 time units)
    match Arnold et al. (2013, table 1; c = 10, F = 20): U(X) within 0.5 over the central 90% of
    the X climatology (X in [-4.5, 12.3]); sigma within 5% of 1.99; phi within 0.006 of 0.986.
    A wrong coupling constant (h c / b) or fast-ring order moves U by several units."""
    fit = fit_closure(Lorenz96TwoScale(), n_traj=4, duration=5.0, spinup=2.0, seed=1)
    xs = np.linspace(-4.5, 12.3, 50)
    ours = np.polyval(fit["coefficients"][::-1], xs)
    published = np.polyval(ARNOLD_2013["coefficients"][::-1], xs)
    assert np.abs(ours - published).max() < 0.5
    assert fit["sigma"] == pytest.approx(ARNOLD_2013["sigma"], rel=0.05)
    assert fit["phi"] == pytest.approx(ARNOLD_2013["phi"], abs=0.006)
    # climatology of X (this implementation, 1280k samples: mean 3.8, std 5.08; stated in docs/systems.md)
    assert 3.4 < fit["x_mean"] < 4.2 and 4.8 < fit["x_std"] < 5.4


def test_ar1_noise_has_its_stationary_std_and_lag_one_correlation():
    """e drawn from N(0, sigma^2) by perturb stays N(0, sigma^2) and has lag-one correlation phi."""
    model = StochasticLorenz96(phi=0.9, sigma=2.0)
    x0 = model.perturb(torch.full((20000, 8), 3.0, dtype=torch.float64), member_generator(0), 0.1)
    x1 = model.step(x0, 1, generator=member_generator(1))
    e0, e1 = x0[:, 8:].numpy().ravel(), x1[:, 8:].numpy().ravel()
    assert e1.std() == pytest.approx(2.0, rel=0.02)
    assert np.corrcoef(e0, e1)[0, 1] == pytest.approx(0.9, abs=0.01)


def test_simulate_runs_the_stochastic_model_from_truth_states_with_stable_member_seeds():
    """simulate(truth, forecast_system=model): member m is the same draw whatever the ensemble size,
    members differ (noise and perturbations), and the truth field is the two-scale truth's X."""
    truth, model = Lorenz96TwoScale(), StochasticLorenz96()
    kw = dict(forecast_system=model, n_init=2, n_leads=2, lead_interval=0.05, spinup=0.5, seed=3, progress=False)
    big, small = simulate(truth, n_members=3, **kw), simulate(truth, n_members=2, **kw)
    assert big.x.dims == ("init_time", "lead_time", "member", "k") and big.x_truth.sizes["k"] == 8
    np.testing.assert_array_equal(big.x.isel(member=slice(0, 2)).values, small.x.values)
    assert float(big.x.std("member").isel(lead_time=-1).min()) > 0
    np.testing.assert_allclose(big.x.isel(lead_time=0).mean("member"), big.x_truth.isel(lead_time=0), atol=0.5)
    assert model.params()["coefficients"] == list(ARNOLD_2013["coefficients"])


@pytest.mark.parametrize("multiplicative", [False, True])
def test_one_step_adds_minus_dt_times_the_noise_additively_or_times_the_closure(multiplicative):
    """X(dt) = RK4 step without noise - dt e(dt) [* U(X(0)) for the multiplicative scheme]."""
    noisy = StochasticLorenz96(sigma=1.5, phi=0.5, multiplicative=multiplicative)
    x0 = noisy.perturb(torch.linspace(-5, 12, 8, dtype=torch.float64)[None].repeat(3, 1), member_generator(0), 0.0)
    x1 = noisy.step(x0, 1, generator=member_generator(1))
    det = StochasticLorenz96(sigma=0.0).step(x0, 1)[:, :8]
    factor = noisy.closure(x0[:, :8]) if multiplicative else 1.0
    torch.testing.assert_close(x1[:, :8], det - noisy.dt * x1[:, 8:] * factor, rtol=0, atol=1e-12)
