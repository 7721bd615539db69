"""The exact Gaussian-mixture yardstick checked against independent computations."""

import math

import pytest
import torch

from sciffusion.testing import GaussianMixture, SlicedWasserstein, grid_mixture, mcg_problem, sliced_wasserstein


def random_mixture(d=3, k=4, full=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)
    if full:
        a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
        covs = a @ a.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
    else:
        covs = torch.rand(k, d, generator=g, dtype=torch.float64) + 0.2
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    return GaussianMixture(w, means, covs)


@pytest.mark.parametrize("full", [True, False])
def test_denoiser_is_tweedie_of_the_noisy_log_density(full):
    """D(x, s) = x + s^2 grad log p_s(x) (Tweedie), checked by autograd of the log-density."""
    gm = random_mixture(full=full)
    x = 4 * torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = torch.exp(torch.linspace(-4, 3, 64, dtype=torch.float64))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(xr, sigma).sum(), xr)
    expected = x + sigma[:, None] ** 2 * grad
    torch.testing.assert_close(gm(x, sigma), expected, rtol=1e-9, atol=1e-9)


def test_isotropic_fast_path_equals_general_path():
    """The BLAS path for S_k = lam_k I agrees with the eigenbasis path."""
    g = torch.Generator().manual_seed(3)
    means = 5 * torch.randn(6, 10, generator=g, dtype=torch.float64)
    lam = torch.rand(6, dtype=torch.float64) + 0.5
    iso = GaussianMixture(torch.ones(6), means, lam[:, None].expand(6, 10))
    full = GaussianMixture(torch.ones(6), means, torch.diag_embed(lam[:, None].expand(6, 10)))
    assert iso._iso is not None and full._iso is None
    x = 6 * torch.randn(50, 10, generator=g, dtype=torch.float64)
    s = torch.exp(torch.randn(50, generator=g, dtype=torch.float64))
    torch.testing.assert_close(iso(x, s), full(x, s), rtol=1e-10, atol=1e-10)


def test_denoiser_covariance_is_sigma2_times_jacobian():
    """Cov[x0 | x] = s^2 dD/dx (second-order Tweedie), checked by autograd."""
    gm = random_mixture(full=True, seed=2)
    x = 3 * torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    s = 0.7
    cov = gm.denoise_cov(x, s)
    for b in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: gm(v[None], s)[0], x[b])
        torch.testing.assert_close(cov[b], s**2 * jac, rtol=1e-8, atol=1e-9)


def test_exact_sampling_matches_mixture_moments():
    """Sample mean and covariance of 200k exact draws match the closed-form moments."""
    gm = random_mixture(full=True, seed=4)
    x = gm.sample(200_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gm.cov(), atol=0.15, rtol=0.02)


def test_posterior_matches_quadrature_in_2d():
    """Posterior mean and covariance against brute-force quadrature of prior x likelihood on a grid."""
    gm = random_mixture(d=2, k=3, full=True, seed=5)
    A = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    y = torch.tensor([1.3], dtype=torch.float64)
    post = gm.posterior(A, y, 0.8)
    g = torch.linspace(-20, 20, 1601, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.ravel(), yy.ravel()], 1)
    logw = gm.log_prob(pts) - 0.5 * ((pts @ A.T - y) ** 2).sum(1) / 0.8**2
    w = torch.softmax(logw, 0)
    mean = w @ pts
    cov = (w[:, None] * (pts - mean)).T @ (pts - mean)
    torch.testing.assert_close(post.mean(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(post.cov(), cov, rtol=1e-5, atol=1e-6)


def test_posterior_accepts_per_point_and_full_noise():
    """Per-observation std and the equivalent diagonal covariance give the same posterior."""
    gm = random_mixture(d=3, k=2, full=False, seed=6)
    A = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0.5, -1.0], dtype=torch.float64)
    p1 = gm.posterior(A, y, torch.tensor([0.3, 0.9]))
    p2 = gm.posterior(A, y, torch.diag(torch.tensor([0.09, 0.81], dtype=torch.float64)))
    torch.testing.assert_close(p1.mean(), p2.mean())
    torch.testing.assert_close(p1.cov(), p2.cov())


def test_mcg_problem_and_grid_mixture_shapes():
    """The MCGdiff recipe: 25 components, spacing 8, singular values in (0, 1)."""
    prior, A, y, noise_std, x_true = mcg_problem(8, 2, seed=100)
    assert prior.k == 25 and prior.d == 8 and A.shape == (2, 8) and y.shape == (2,)
    s = torch.linalg.svdvals(A)
    assert bool((s > 0).all() and (s < 1).all()) and 0 < noise_std < float(s.max())
    gm = grid_mixture(2)
    assert sorted(set(gm.means[:, 0].tolist())) == [-16.0, -8.0, 0.0, 8.0, 16.0]


def test_sliced_wasserstein_of_a_shift_is_the_mean_projected_shift():
    """SW1(x, x + c) = mean over directions of |theta . c| = |c| E|theta_1| (2/pi in 2-D)."""
    x = torch.randn(500, 2, dtype=torch.float64)
    sw = sliced_wasserstein(x, x + torch.tensor([3.0, 0.0], dtype=torch.float64), n_directions=20000)
    assert sw == pytest.approx(3 * 2 / math.pi, rel=0.02)
    assert sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_against_a_cached_reference_is_the_same_number():
    """SlicedWasserstein(y, L)(x) reuses y's sorted projections: identical to sliced_wasserstein(x, y, L)
    and symmetric, and it names a shape mismatch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 5, generator=g, dtype=torch.float64), 2 + torch.randn(300, 5, generator=g, dtype=torch.float64)
    ref = SlicedWasserstein(y, 700)
    assert ref(x) == sliced_wasserstein(x, y, 700) == sliced_wasserstein(y, x, 700)
    assert SlicedWasserstein(y, 700, p=2)(x) == sliced_wasserstein(x, y, 700, p=2)
    with pytest.raises(ValueError, match="same shape"):
        ref(x[:10])


def test_full_covariance_samples_are_the_means_plus_the_rotated_scaled_noise():
    """sample() rotates by each component's eigenvectors: equal to means[k] + Q_k (sqrt(lam_k) * eps) drawn
    from the same generator, computed here sample by sample."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    gm = GaussianMixture([0.2, 0.3, 0.5], torch.randn(3, 4, generator=g, dtype=torch.float64), a @ a.transpose(1, 2))
    x = gm.sample(50, torch.Generator().manual_seed(7))
    g2 = torch.Generator().manual_seed(7)
    comp = torch.multinomial(gm.weights, 50, replacement=True, generator=g2)
    eps = torch.randn(50, 4, generator=g2, dtype=torch.float64)
    expect = torch.stack([gm.means[k] + gm.eigvecs[k] @ (gm.eigvals[k].sqrt() * e) for k, e in zip(comp.tolist(), eps)])
    torch.testing.assert_close(x, expect, rtol=1e-12, atol=1e-12)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([1.0], torch.zeros(3))
    with pytest.raises(ValueError, match="event shape"):
        grid_mixture(2)(torch.zeros(4, 3), 1.0)
