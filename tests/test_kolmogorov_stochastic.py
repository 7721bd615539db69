"""StochasticKolmogorovFlow: Kolmogorov flow plus additive AR(1) vorticity forcing."""

import math

import numpy as np
import pytest
import torch

from sciffusion.systems import KolmogorovFlow, simulate
from sciffusion.systems.kolmogorov_stochastic import StochasticKolmogorovFlow

PARAMS = {"n": 16, "reynolds": 80.0, "drag": 0.12, "dt": 0.05}


def _state(model, seed=0, batch=3):
    return model.initial_state(batch, torch.Generator().manual_seed(seed))


def test_sigma_zero_is_kolmogorov_flow_bit_for_bit():
    det, sto = KolmogorovFlow(**PARAMS), StochasticKolmogorovFlow(**PARAMS, sigma=0.0)
    w = det.initial_state(3, torch.Generator().manual_seed(0))
    x = torch.stack([w, torch.zeros_like(w)], dim=1)
    assert torch.equal(sto.step(x, 7)[:, 0], det.step(w, 7))
    assert torch.equal(sto.advance(x, 250)[:, 0], det.advance(w, 250))
    truth = KolmogorovFlow(n=16)
    kw = {"n_members": 3, "n_init": 2, "n_leads": 2, "lead_interval": 0.2, "spinup": 1.0, "perturbation": 0.1,
          "progress": False}
    a = simulate(truth, forecast_system=det, **kw)
    b = simulate(truth, forecast_system=sto, **kw)
    np.testing.assert_array_equal(a.vorticity.values, b.vorticity.values)


def test_forcing_process_matches_ar1_closed_form():
    """Stationary grid variance sigma^2 and lag-dt autocorrelation exp(-dt/tau), within 4 Monte Carlo
    standard errors (estimated from 64 independent chains), in a long run of the forcing alone."""
    sigma, tau = 0.7, 0.25
    model = StochasticKolmogorovFlow(**PARAMS, sigma=sigma, tau=tau)
    g = torch.Generator().manual_seed(1)
    eta = model.stationary_forcing(64, g)
    sq, lag, prev_sq = torch.zeros(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64), 0.0
    n_steps = 1500
    for _ in range(n_steps):
        new = model.update_forcing(eta, g)
        sq += new.pow(2).mean((-2, -1))
        lag += (new * eta).mean((-2, -1))
        prev_sq = prev_sq + eta.pow(2).mean((-2, -1))
        eta = new
    var, rho = (sq / n_steps).numpy(), (lag / prev_sq).numpy()
    phi = math.exp(-PARAMS["dt"] / tau)
    for est, exact in ((var, sigma**2), (rho, phi)):
        se = est.std(ddof=1) / math.sqrt(est.size)
        assert se < 0.02 * exact  # the check is sharp enough to fail
        assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
    assert abs(eta.mean((-2, -1))).max() < 1e-12  # zero-mean fields (no k = 0 mode)


def test_frozen_forcing_is_integrated_exactly_over_a_step():
    """From rest, without the Kolmogorov forcing, a single-Fourier-mode eta (no self-advection) gives after
    one step w = (exp(h L) - 1) / L * eta, L = -nu |k|^2 - mu: the ETDRK4 weights integrate a constant exactly."""
    model = StochasticKolmogorovFlow(**{**PARAMS, "dt": 0.3}, amplitude=0.0, sigma=0.5, tau=1.0)
    yy, xx = torch.meshgrid(*[torch.arange(16, dtype=torch.float64) * 2 * math.pi / 16] * 2, indexing="ij")
    eta = 0.8 * torch.cos(2 * yy + xx)
    x = torch.stack([torch.zeros_like(eta), eta])[None]
    lin = -model.nu * 5 - model.drag
    w = model.step(x, 1, generator=torch.Generator().manual_seed(0))[0, 0]
    torch.testing.assert_close(w, (math.exp(0.3 * lin) - 1) / lin * eta, rtol=1e-10, atol=1e-12)


def test_reproducible_from_the_generator_and_members_independent():
    model = StochasticKolmogorovFlow(**PARAMS, sigma=0.3, tau=0.5)
    x = _state(model)
    run = lambda seed: model.step(x, 20, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5)[:, 0], run(6)[:, 0])
    gens = [torch.Generator().manual_seed(10 + m) for m in range(3)]
    together = model.advance(x, 20, generator=gens)
    alone = model.advance(x[1:2], 20, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(together[1:2], alone, rtol=1e-12, atol=1e-12)  # member 1: only its own generator


def test_simulate_runs_it_from_a_deterministic_truth():
    truth, model = KolmogorovFlow(n=16), StochasticKolmogorovFlow(**PARAMS, sigma=0.3, tau=0.5)
    kw = {"n_init": 2, "n_leads": 2, "lead_interval": 0.2, "spinup": 1.0, "perturbation": 0.0, "progress": False}
    ds = simulate(truth, forecast_system=model, n_members=3, **kw)
    assert ds.vorticity.dims == ("init_time", "lead_time", "member", "y", "x") and list(ds.data_vars) == [
        "vorticity", "vorticity_truth"]
    v = ds.vorticity.values
    np.testing.assert_array_equal(v[:, 0], np.broadcast_to(ds.vorticity_truth.values[:, 0, None], v[:, 0].shape))
    assert np.isfinite(v).all() and v[:, 1:].std(axis=2).min() > 0  # the forcing spreads them
    small = simulate(truth, forecast_system=model, n_members=2, **kw)  # member m: same draw whatever the size
    np.testing.assert_allclose(small.vorticity.values, v[:, :, :2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, name", [({"sigma": -0.1}, "sigma"), ({"tau": -1.0}, "tau"), ({"tau": 0.0}, "tau"),
                                          ({"sigma": float("nan")}, "sigma"), ({"k_peak": -2.0}, "k_peak")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        StochasticKolmogorovFlow(**PARAMS, **kwargs)


def test_noise_needs_a_generator():
    model = StochasticKolmogorovFlow(**PARAMS, sigma=0.3)
    with pytest.raises(ValueError, match="generator"):
        model.step(_state(model, batch=1), 1)
    with pytest.raises(ValueError, match="2 generators for 3"):
        model.step(_state(model), 1, generator=[torch.Generator(), torch.Generator()])
