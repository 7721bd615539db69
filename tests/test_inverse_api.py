"""The sciffusion.inverse.sample entry point: shapes for every method, bad input, residual guidance, PIDM loss."""

import numpy as np
import pytest
import torch

from sciffusion.diffusion import edm_loss
from sciffusion.inverse import METHODS, Box, DarcyResidual, Linear, SparseSensors, data_scale, sample
from sciffusion.physics import darcy_residual
from sciffusion.systems.darcy import solve_darcy
from sciffusion.testing import GaussianMixture, grid_mixture

F64 = torch.float64


def _field_prior():
    """A 4-component mixture of 2 x 4 x 4 fields."""
    g = torch.Generator().manual_seed(0)
    return GaussianMixture(torch.ones(4), 2 * torch.randn(4, 32, generator=g, dtype=F64), 0.3, event_shape=(2, 4, 4))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_n_members_fields_that_fit_the_observations(method):
    prior = _field_prior()
    op = SparseSensors((4, 4), num=5, seed=0, channels=[1])
    truth = prior.sample(1, torch.Generator().manual_seed(5))
    y = op(truth)[0]
    opts = {"projection": Box(-20, 20)} if method == "projected" else {}
    if method == "residual":
        opts = {"residual": lambda x: x[:, 0] - x[:, 1], "zeta_obs": 2.0, "zeta_pde": 0.5}
    x = sample(prior, op, y, noise_std=0.1, guidance=method, n_members=6, steps=15, sigma_max=200.0,
               generator=torch.Generator().manual_seed(1), dtype=F64, **opts)
    assert x.shape == (6, 2, 4, 4) and torch.isfinite(x).all()
    prior_draws = prior.sample(200, torch.Generator().manual_seed(2))
    misfit_prior = float(((op(prior_draws) - y) ** 2).mean())
    assert float(((op(x) - y) ** 2).mean()) < 0.5 * misfit_prior


def test_bad_input_is_named():
    prior = grid_mixture(4)
    op = Linear(torch.randn(2, 4, dtype=F64))
    kw = dict(n_members=2, steps=3, dtype=F64)
    with pytest.raises(ValueError, match="y has shape"):
        sample(prior, op, torch.zeros(3), noise_std=0.1, guidance="mmps", **kw)
    for method in ("dps", "smc", "residual"):
        with pytest.raises(ValueError, match="noise_std"):
            sample(prior, op, torch.zeros(2), noise_std=0.0, guidance=method, residual=lambda x: x, **kw)
    with pytest.raises(ValueError, match="noise_std"):
        sample(prior, op, torch.zeros(2), noise_std=-1.0, guidance="mmps", **kw)
    sample(prior, op, torch.zeros(2), noise_std=0.0, guidance="mmps", **kw)  # noiseless is fine for MMPS

    def numpy_model(x):
        return torch.as_tensor(np.asarray(x)[:, :2])

    for method in ("dps", "pigdm", "mmps", "smc"):
        with pytest.raises(TypeError, match="operator is not differentiable"):
            sample(prior, numpy_model, torch.zeros(2), noise_std=0.1, guidance=method, **kw)
    with pytest.raises(ValueError, match="unknown guidance"):
        sample(prior, op, torch.zeros(2), noise_std=0.1, guidance="ddrm", **kw)
    with pytest.raises(ValueError, match="event_shape"):
        sample(lambda x, s: x, op, torch.zeros(2), noise_std=0.1, guidance="dps", **kw)


def test_method_is_a_deprecated_alias_of_guidance_and_projected_takes_inner_guidance():
    """``method=`` (and, with it, projected's old ``guidance=``) give the same draws with a FutureWarning."""
    prior, a, y = grid_mixture(4), torch.eye(4, dtype=F64)[:2], torch.tensor([1.0, -2.0], dtype=F64)
    kw = dict(noise_std=0.5, n_members=3, steps=5, dtype=F64)
    new = sample(prior, Linear(a), y, guidance="pigdm", generator=torch.Generator().manual_seed(0), **kw)
    with pytest.warns(FutureWarning, match="method= is deprecated, use guidance="):
        old = sample(prior, Linear(a), y, method="pigdm", generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    kw.update(projection=Box(-20, 20), generator=torch.Generator().manual_seed(0))
    new = sample(prior, Linear(a), y, guidance="projected", inner_guidance="dps", **kw)
    kw.update(generator=torch.Generator().manual_seed(0))
    with pytest.warns(FutureWarning, match="use guidance="), pytest.warns(FutureWarning, match="use inner_guidance="):
        old = sample(prior, Linear(a), y, method="projected", guidance="dps", **kw)
    torch.testing.assert_close(old, new, rtol=0, atol=0)


def test_data_scale_is_the_rms_norm_of_the_prior():
    """From ``sigma_data`` when the denoiser has one, else measured by Tweedie: sqrt(E|x0|^2) exactly."""
    prior = grid_mixture(8, seed=3)
    exact = float((prior.cov().trace() + (prior.mean() ** 2).sum()).sqrt())
    assert abs(data_scale(prior, (8,), F64) / exact - 1) < 1e-6
    assert abs(data_scale(prior, (8,), torch.float32) / exact - 1) < 1e-4
    prior.sigma_data = 2.0
    assert data_scale(prior, (8,)) == 2.0 * 8**0.5


def test_missing_observations_in_y_are_ignored_by_sample():
    """A NaN entry of y gives the same draws as leaving that observation out."""
    prior = grid_mixture(4)
    a = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.tensor([1.0, float("nan"), -2.0], dtype=F64)
    kw = dict(noise_std=0.5, guidance="pigdm", n_members=50, steps=10, sigma_max=500.0, dtype=F64)
    x_nan = sample(prior, Linear(a), y, generator=torch.Generator().manual_seed(0), **kw)
    x_red = sample(prior, Linear(a[[0, 2]]), y[[0, 2]], generator=torch.Generator().manual_seed(0), **kw)
    assert torch.isfinite(x_nan).all()
    torch.testing.assert_close(x_nan, x_red)


def test_darcy_residual_vanishes_on_solver_output_and_guidance_reduces_it():
    """DarcyResidual is zero (round-off) on sciffusion.systems solutions; residual guidance lowers
    the PDE residual of samples from a prior that ignores the PDE."""
    n = 8
    a = 3.0 + 9.0 * (torch.rand(n, n, generator=torch.Generator().manual_seed(0)) > 0.5).to(F64)
    u = torch.as_tensor(solve_darcy(a.numpy()))
    res = DarcyResidual()(torch.stack([a, u])[None])
    assert float(res.abs().max()) < 1e-9
    torch.testing.assert_close(res[0], darcy_residual(a, u))
    # prior: a fixed at the truth, u ~ truth + N(0, 0.05^2) iid  (does not know the PDE)
    prior = GaussianMixture([1.0], torch.stack([a, u]).reshape(1, -1),
                            torch.cat([torch.full((n * n,), 1e-8), torch.full((n * n,), 0.05**2)])[None],
                            event_shape=(2, n, n))
    resid = DarcyResidual()
    kw = dict(n_members=20, steps=20, sigma_max=50.0, dtype=F64, event_shape=(2, n, n))
    plain = sample(prior, None, None, noise_std=None, guidance="residual", residual=resid, zeta_pde=0.0,
                   generator=torch.Generator().manual_seed(0), **kw)
    guided = sample(prior, None, None, noise_std=None, guidance="residual", residual=resid, zeta_pde=1.0,
                    generator=torch.Generator().manual_seed(0), **kw)
    assert float(resid(guided).abs().mean()) < 0.5 * float(resid(plain).abs().mean())


def test_pidm_residual_term_adds_weight_times_mean_squared_residual():
    """edm_loss(residual=R, residual_weight=c) = edm_loss + c * mean(R(D(x, sigma))^2) per sample, and the
    default is the plain EDM loss."""
    prior = grid_mixture(4)
    x0 = prior.sample(16, torch.Generator().manual_seed(0))
    base = edm_loss(prior, x0, generator=torch.Generator().manual_seed(1), reduce=False)
    seen = []

    def residual(x0_hat):
        seen.append(x0_hat)
        return x0_hat[:, :2].sum(1, keepdim=True) - 1.0

    pidm = edm_loss(prior, x0, generator=torch.Generator().manual_seed(1), reduce=False, residual=residual,
                    residual_weight=0.25)
    expected = base + 0.25 * (residual(seen[0]) ** 2).mean(1)
    torch.testing.assert_close(pidm, expected)
    torch.testing.assert_close(edm_loss(prior, x0, generator=torch.Generator().manual_seed(1), reduce=False,
                                        residual=residual, residual_weight=0.0), base)
