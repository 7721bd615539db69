"""Guidance wrappers (DPS, PiGDM, MMPS) against exact posteriors of Gaussian priors."""

import pytest
import torch

from sciffusion.diffusion import sample as diffusion_sample
from sciffusion.inverse import DPS, MMPS, Linear, Observation, PiGDM, conjugate_gradient, sample
from sciffusion.testing import GaussianMixture, sliced_wasserstein

F64 = torch.float64


def _gaussian_problem(isotropic: bool, d=5, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(1, d, generator=g, dtype=F64)
    if isotropic:
        cov = torch.eye(d, dtype=F64)[None]
    else:
        l = torch.randn(d, d, generator=g, dtype=F64)
        cov = (l @ l.T / d + 0.2 * torch.eye(d, dtype=F64))[None]
    prior = GaussianMixture([1.0], mean, cov)
    a = torch.randn(m, d, generator=g, dtype=F64)
    y = torch.randn(m, generator=g, dtype=F64)
    return prior, a, y, 0.3


def test_conjugate_gradient_solves_spd_systems_exactly_in_m_steps():
    g = torch.Generator().manual_seed(0)
    l = torch.randn(3, 4, 4, generator=g, dtype=F64)
    mat = l @ l.transpose(1, 2) + 0.1 * torch.eye(4, dtype=F64)
    b = torch.randn(3, 4, generator=g, dtype=F64)
    u = conjugate_gradient(lambda v: (mat @ v[..., None])[..., 0], b, iters=4)
    torch.testing.assert_close(u, torch.linalg.solve(mat, b))


@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_mmps_with_exact_covariance_is_the_exact_posterior_denoiser(sigma):
    """For a Gaussian prior and linear A, p_sigma(y | x) is exactly N(A D, R + A Cov A^T), so the
    MMPS denoiser with an exact CG solve equals the denoiser of the exact posterior."""
    prior, a, y, s = _gaussian_problem(isotropic=False)
    post = prior.posterior(a, y, s)
    guided = MMPS(prior, Observation(Linear(a), y, s, (5,)), cg_iters=3)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64) * (1 + sigma)
    torch.testing.assert_close(guided(x, sigma), post(x, sigma), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_pigdm_is_exact_when_its_isotropic_covariance_is(sigma):
    """PiGDM's r^2 = sigma^2/(1+sigma^2) is the exact Cov[x0|x] of a unit-covariance Gaussian prior."""
    prior, a, y, s = _gaussian_problem(isotropic=True)
    guided = PiGDM(prior, Observation(Linear(a), y, s, (5,)), sigma_data=1.0)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64) * (1 + sigma)
    torch.testing.assert_close(guided(x, sigma), prior.posterior(a, y, s)(x, sigma), rtol=1e-7, atol=1e-8)


def test_pigdm_differs_from_exact_when_the_prior_is_not_isotropic():
    """The yardstick can tell PiGDM's approximation apart from MMPS (guards the tests above)."""
    prior, a, y, s = _gaussian_problem(isotropic=False)
    guided = PiGDM(prior, Observation(Linear(a), y, s, (5,)), sigma_data=1.0)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert (guided(x, 1.0) - prior.posterior(a, y, s)(x, 1.0)).abs().max() > 1e-2


@pytest.mark.parametrize("cls", [PiGDM, MMPS])
def test_missing_observation_equals_dropping_the_row(cls):
    prior, a, y, s = _gaussian_problem(isotropic=False)
    y_nan = y.clone()
    y_nan[1] = float("nan")
    full = cls(prior, Observation(Linear(a), y_nan, s, (5,)), cg_iters=3)
    reduced = cls(prior, Observation(Linear(a[[0, 2]]), y[[0, 2]], s, (5,)), cg_iters=3)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(full(x, 0.7), reduced(x, 0.7))


@pytest.mark.parametrize("sampler,steps", [("heun", 20), ("ddim", 60)])
def test_mmps_guided_samplers_reproduce_the_exact_posterior(sampler, steps):
    """Guidance is a wrapper denoiser, so it runs inside any sampler of sciffusion.diffusion:
    samples are within 2x of the two-sample SW floor of the exact posterior."""
    prior, a, y, s = _gaussian_problem(isotropic=False)
    post = prior.posterior(a, y, s)
    n = 1000
    e1 = post.sample(n, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(e1, post.sample(n, torch.Generator().manual_seed(2)), 500)
    x = sample(prior, Linear(a), y, noise_std=s, guidance="mmps", n_members=n, steps=steps, sampler=sampler,
               sigma_max=100.0, dtype=F64, generator=torch.Generator().manual_seed(3), cg_iters=3)
    assert sliced_wasserstein(x, e1, 500) < 2 * floor


def test_dps_strength_does_not_need_retuning_with_the_step_count():
    """DPS's zeta is a push per unit of ln(sigma): samples at 25 and 200 steps agree (their mean
    gap is small against the prior-to-posterior shift), unlike per-step DPS whose push grows with steps."""
    prior, a, y, s = _gaussian_problem(isotropic=True)
    post = prior.posterior(a, y, s)
    den = DPS(prior, Observation(Linear(a), y, s, (5,)), zeta=1.0)
    means = []
    for steps in (25, 200):
        x = diffusion_sample(den, (400, 5), steps=steps, method="euler", sigma_max=100.0, dtype=F64,
                             generator=torch.Generator().manual_seed(0))
        means.append(x.mean(0))
    shift = (post.mean() - prior.mean()).norm()
    assert (means[0] - means[1]).norm() < 0.15 * shift
    assert (means[1] - post.mean()).norm() < 0.5 * shift  # and it does move towards the posterior
