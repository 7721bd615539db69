"""Lorenz-96: the ODE, the RK4 scheme, published statistics, two-level coupling, model error."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from sciffusion.systems import Lorenz96, leading_lyapunov_exponent, lorenz96_forecast_model


def numpy_l96(x, forcing):
    """Independent loop implementation of dx_k/dt = (x_{k+1} - x_{k-2}) x_{k-1} - x_k + F."""
    k = len(x)
    return np.array([(x[(i + 1) % k] - x[i - 2]) * x[i - 1] - x[i] + forcing for i in range(k)])


def numpy_rk4(x, forcing, dt, n):
    for _ in range(n):
        k1 = numpy_l96(x, forcing)
        k2 = numpy_l96(x + dt / 2 * k1, forcing)
        k3 = numpy_l96(x + dt / 2 * k2, forcing)
        k4 = numpy_l96(x + dt * k3, forcing)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.fixture(scope="module")
def attractor_states():
    s = Lorenz96()
    g = torch.Generator().manual_seed(0)
    return s.step(s.initial_state(8, g), 200)  # 10 time units of spin-up


def test_trajectory_matches_independent_numpy_rk4_to_float_tolerance(attractor_states):
    s = Lorenz96()
    x0 = attractor_states[:1]
    ours = s.step(x0, 20)[0].numpy()
    ref = numpy_rk4(x0[0].numpy(), 8.0, 0.05, 20)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-11)


def test_rk4_converges_to_the_exact_ode_solution_of_solve_ivp(attractor_states):
    x0 = attractor_states[0].numpy()
    ref = solve_ivp(lambda t, x: numpy_l96(x, 8.0), (0, 0.5), x0, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    errs = []
    for dt in (0.05, 0.025):
        s = Lorenz96(dt=dt)
        errs.append(np.abs(s.step(torch.tensor(x0)[None], round(0.5 / dt))[0].numpy() - ref).max())
    assert errs[0] < 0.05  # RK4 at dt = 6 h is accurate to ~1e-2 after 0.5 time units
    assert 3.5 < np.log2(errs[0] / errs[1]) < 4.5  # fourth order


def test_climatological_mean_and_std_match_published_values(attractor_states):
    traj = Lorenz96().integrate(attractor_states, 300, 1)  # 8 members x 15 time units
    assert abs(float(traj.mean()) - 2.3) < 0.15
    assert abs(float(traj.std()) - 3.6) < 0.15


def test_leading_lyapunov_exponent_near_published_1_7(attractor_states):
    lam = leading_lyapunov_exponent(Lorenz96(), attractor_states, 400)
    assert 1.4 < lam < 2.0


def test_two_level_coupling_exchanges_energy_without_creating_it():
    """With E = (|X|^2 + |Y|^2)/2, advection and coupling cancel: dE/dt = F sum X - |X|^2 - c |Y|^2."""
    s = Lorenz96(k=8, j=4)
    x = torch.randn(3, s.state_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    big, small = x[:, :8], x[:, 8:]
    de = (x * s.tendency(x)).sum(-1)
    expected = 8.0 * big.sum(-1) - (big**2).sum(-1) - s.c * (small**2).sum(-1)
    torch.testing.assert_close(de, expected)


def test_two_level_with_zero_coupling_reduces_to_one_level():
    two, one = Lorenz96(k=8, j=4, h=0.0, dt=0.005), Lorenz96(k=8, dt=0.005)
    x = torch.randn(2, two.state_size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(two.step(x, 10)[:, :8], one.step(x[:, :8], 10))


def test_forecast_model_has_model_error_and_per_member_noise():
    truth, model = Lorenz96(), lorenz96_forecast_model(forcing_error=1.0, noise_std=0.5)
    assert model.forcing == 9.0 and model.noise_std == 0.5
    x = torch.full((2, 40), 1.0, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(k) for k in (5, 6)]
    a = model.step(x, 3, generator=gens)
    b = model.step(x[:1], 3, generator=[torch.Generator().manual_seed(5)])
    torch.testing.assert_close(a[:1], b)  # member 0's noise does not depend on the ensemble size
    assert not torch.allclose(a, truth.step(x, 3))


@pytest.mark.parametrize("kwargs,needle", [({"k": 3}, "k "), ({"dt": 0.0}, "dt"), ({"j": -1}, "j ")])
def test_bad_parameters_raise_errors_naming_them(kwargs, needle):
    with pytest.raises(ValueError, match=needle.strip()):
        Lorenz96(**kwargs)
