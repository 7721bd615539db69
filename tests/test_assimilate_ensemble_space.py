"""sciffusion.assimilate.ensemble_space: the local analysis on the members' weights (``space="ensemble"``)."""

import math

import pytest
import torch

from sciffusion.assimilate import local_analysis, periodic_domains
from sciffusion.assimilate.ensemble_space import LinearPosterior, WeightPrior
from sciffusion.assimilate.local import periodic_domains_2d
from sciffusion.testing import GaussianMixture

N, D = 8, 40
OBS = torch.arange(0, D, 2)


def _problem(seed=0):
    """Smooth members on a ring of 40 points, every second point observed, one observation
    missing, one std larger than the others."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(N, D, generator=g, dtype=torch.float64).cumsum(1) + torch.randn(1, D, generator=g,
                                                                                           dtype=torch.float64)
    y = x.mean(0)[OBS] + 0.5 * torch.randn(len(OBS), generator=g, dtype=torch.float64)
    y[3] = float("nan")
    std = torch.full((len(OBS),), 0.4, dtype=torch.float64)
    std[5] = 0.9
    return x, y, std


def _letkf(x, y, std, domains, inflation, sigma_max, sigma_min=0.002):
    """The LETKF's analysis (Hunt et al. 2007) per domain, R-localised by the domains' weights, with
    the symmetric square root, written out in closed form. The diffusion transport reaches it in
    the limit of fine steps; the finite top level ``sigma_max`` is included exactly (the members go
    up the prior's flow to it and come down the posterior's: ``w -> w_bar + P^{1/2} (P + s^2)^{-1/2}
    (sqrt(1 + s^2) w - w_bar)`` for a Gaussian)."""
    mean = x.mean(0)
    a = (x - mean) * inflation / math.sqrt(N - 1)
    w0 = math.sqrt(N - 1) * (torch.eye(N, dtype=torch.float64) - 1 / N)
    up = math.sqrt(1 + sigma_max**2) / math.sqrt(1 + sigma_min**2)
    out = torch.empty_like(x)
    for j in range(domains.windows.shape[0]):
        read = domains.windows[j][domains.obs_pos[j]]
        yj = y[domains.obs[j]]
        weight = domains.weight[j] * ~torch.isnan(yj)
        r_inv = torch.diag(weight / std[domains.obs[j]] ** 2)
        ya = a[:, read]
        pa = torch.linalg.inv(torch.eye(N, dtype=torch.float64) + ya @ r_inv @ ya.T)
        w_bar = pa @ ya @ r_inv @ (torch.nan_to_num(yj) - mean[read])
        lam, v = torch.linalg.eigh(pa)
        down = v @ torch.diag(lam.sqrt() / (lam + sigma_max**2).sqrt()) @ v.T
        wa = w_bar + (up * w0 - w_bar) @ down.T
        idx = domains.windows[j][domains.keep[j]]
        out[:, idx] = mean[idx] + wa @ a[:, idx]
    return out


@pytest.mark.parametrize("inflation", [1.0, 1.1])
def test_gaussian_ensemble_space_analysis_is_the_letkf(inflation):
    """Bandwidth 1, a linear observation, the member transport: each domain's analysis is the
    LETKF's (weights ``w_bar + P_a^{1/2} w_i``; R-localised, a missing observation, per-entry
    noise, inflation), to the Heun discretisation (64 steps: 6e-4 against a 3.2 update)."""
    x, y, std = _problem()
    domains = periodic_domains(D, OBS, radius=4, block=2, obs_radius=2.0)
    xa = local_analysis(x, y, domains=domains, noise_std=std, space="ensemble", steps=64, sigma_max=20.0,
                        guidance="mmps", cg_iters=10, inflation=inflation)
    exact = _letkf(x, y, std, domains, inflation, 20.0)
    assert float((exact - x).abs().max()) > 1.0  # the observations move the members
    torch.testing.assert_close(xa, exact, rtol=0, atol=3e-3)
    coarse = local_analysis(x, y, domains=domains, noise_std=std, space="ensemble", steps=16, sigma_max=20.0,
                            guidance="mmps", cg_iters=10, inflation=inflation)
    assert float((coarse - exact).abs().max()) > 3 * float((xa - exact).abs().max())  # converging with steps


def test_weight_prior_is_the_exact_mixture_denoiser():
    """The weight-space prior's denoiser equals the exact denoiser of the mixture it stands for
    (means ``a sqrt(N-1) (e_i - 1/N)``, covariance ``h^2 I``), at bandwidth 1 (one Gaussian) and below."""
    g = torch.Generator().manual_seed(2)
    z = 3 * torch.randn(50, N, generator=g, dtype=torch.float64)
    sigma = torch.rand(50, generator=g, dtype=torch.float64) * 5 + 0.01
    for h in (1.0, 0.6, 0.2):
        a = math.sqrt((1 - h**2) * N / (N - 1))
        means = a * math.sqrt(N - 1) * (torch.eye(N, dtype=torch.float64) - 1 / N)
        exact = GaussianMixture(torch.ones(N), means, h**2)
        torch.testing.assert_close(WeightPrior(N, h)(z, sigma), exact(z, sigma), rtol=0, atol=1e-12)


def test_the_weight_prior_pushes_forward_to_the_ensemble_moments():
    """Mapped through ``mean + w A / sqrt(N - 1)``, the weight prior's mean and covariance are the
    ensemble's for every bandwidth (the state-space prior's property), computed from its components."""
    x, _, _ = _problem(seed=4)
    mean, a = x.mean(0), (x - x.mean(0)) / math.sqrt(N - 1)
    for h in (1.0, 0.5):
        p = WeightPrior(N, h)
        means = torch.zeros(1, N, dtype=torch.float64) if p.means is None else p.means
        m_w = means.mean(0)
        cov_w = (means - m_w).T @ (means - m_w) / len(means) + h**2 * torch.eye(N, dtype=torch.float64)
        torch.testing.assert_close(mean + m_w @ a, mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(a.T @ cov_w @ a, torch.cov(x.T), rtol=0, atol=1e-12)


def test_a_domain_without_observations_keeps_its_forecast_and_huge_noise_changes_nothing():
    """Blocks whose observations are all missing keep the forecast bit for bit; with observation
    noise 1e4 the nonlinear (arctan) analysis carries each member up and back down the prior's
    flow to itself, to the Heun round trip's error (32 steps: 3e-3; 8 steps: 0.2)."""
    x, y, _ = _problem(seed=1)
    y = torch.atan(y)
    y[:10] = float("nan")  # points 0..18 unobserved
    domains = periodic_domains(D, OBS, radius=1, block=2)
    xa = local_analysis(x, y, domains=domains, noise_std=0.3, function=torch.atan, space="ensemble", steps=8)
    assert torch.equal(xa[:, 2:18], x[:, 2:18])
    assert float((xa[:, 22:] - x[:, 22:]).abs().max()) > 0.05
    still = local_analysis(x, y, domains=domains, noise_std=1e4, function=torch.atan, space="ensemble", steps=32)
    assert float((still - x).abs().max()) < 5e-3


def test_two_dimensional_layout_and_mixture_run_and_reduce_the_error():
    """On a 16 x 16 periodic grid (blocks of 4, a halo wider than the window it replaces) the
    ensemble-space analysis with a mixture prior draws the members toward a truth observed at
    1/4 of the points."""
    g = torch.Generator().manual_seed(5)
    k = torch.fft.fftfreq(16) * 16
    spec = torch.exp(-(k[:, None] ** 2 + k[None] ** 2) / 8)
    def field(n):  # smooth random fields of unit RMS
        f = torch.fft.ifft2(spec * torch.randn(n, 16, 16, generator=g, dtype=torch.complex128)).real
        return f / f.pow(2).mean().sqrt()

    truth = field(1)[0]
    x = truth + field(N)
    obs = torch.tensor([i * 16 + j for i in range(0, 16, 2) for j in range(0, 16, 2)])
    y = truth.reshape(-1)[obs] + 0.1 * torch.randn(len(obs), generator=g, dtype=torch.float64)
    domains = periodic_domains_2d((16, 16), obs, radius=4, block=4, obs_radius=3.0)
    xa = local_analysis(x, y, domains=domains, noise_std=0.1, space="ensemble", bandwidth=0.7, steps=16)
    err = lambda e: float((e.mean(0) - truth).pow(2).mean().sqrt())
    assert err(xa) < 0.65 * err(x)  # measured 0.53


def test_bad_space_and_a_taper_are_refused():
    x, y, std = _problem()
    with pytest.raises(ValueError, match="space must be"):
        local_analysis(x, y, domains=periodic_domains(D, OBS, radius=2), noise_std=std, space="weights")
    with pytest.raises(ValueError, match="taper"):
        local_analysis(x, y, domains=periodic_domains(D, OBS, radius=2, taper_radius=2.0), noise_std=std,
                       space="ensemble")


@pytest.mark.parametrize("h", [1.0, 0.6, 0.0])
def test_linear_posterior_is_the_exact_posterior_denoiser(h):
    """``LinearPosterior`` (per-domain eigenbasis, shared precision) equals ``E[w_0 | w_t, b]``
    computed independently by conditioning each component's joint Gaussian of ``(w_0, w_t, b)``
    and weighting the components by that joint's density of ``(w_t, b)``; padding slots (all-zero
    rows of the design) change nothing."""
    from torch.distributions import MultivariateNormal

    g = torch.Generator().manual_seed(7)
    n, k, m = 5, 3, 7
    design = torch.randn(k, n, m, generator=g, dtype=torch.float64)
    data = torch.randn(k, m, generator=g, dtype=torch.float64)
    design[1, :, 5:], data[1, 5:] = 0.0, 0.0
    prior = WeightPrior(n, h)
    means = torch.zeros(1, n, dtype=torch.float64) if prior.means is None else prior.means
    post, eye = LinearPosterior(prior, design, data), torch.eye(n, dtype=torch.float64)
    for s in (0.05, 0.7, 5.0):
        x = 2 * torch.randn(4 * k, n, generator=g, dtype=torch.float64)
        ref = torch.empty_like(x)
        for r in range(4 * k):
            a, b, wt = design[r % k].T, data[r % k], x[r]
            cov = torch.cat([torch.cat([(h**2 + s**2) * eye, h**2 * a.T], 1),
                             torch.cat([h**2 * a, torch.eye(m, dtype=torch.float64) + h**2 * a @ a.T], 1)])
            z = torch.cat([wt, b])
            logw, mus = [], []
            for mu in means:
                centre = torch.cat([mu, a @ mu])
                logw.append(MultivariateNormal(centre, cov).log_prob(z))
                mus.append(mu + torch.cat([h**2 * eye, h**2 * a.T], 1) @ torch.linalg.solve(cov, z - centre))
            ref[r] = (torch.softmax(torch.stack(logw), 0)[:, None] * torch.stack(mus)).sum(0)
        torch.testing.assert_close(post(x, s), ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("h", [1.0, 0.6])
def test_linear_posterior_flow_is_the_heun_loop(h):
    """``LinearPosterior.flow`` (at h = 1 one composed affine map per eigen-coordinate) gives the
    numbers of a loop of ``heun_step`` over the same denoiser, Euler last step to 0 included; a
    wrong step coefficient (Euler in place of Heun) is caught by the same comparison."""
    from sciffusion.diffusion import euler_step, heun_step, karras_sigmas

    g = torch.Generator().manual_seed(3)
    n, k, m = 6, 4, 8
    post = LinearPosterior(WeightPrior(n, h), torch.randn(k, n, m, generator=g, dtype=torch.float64),
                           torch.randn(k, m, generator=g, dtype=torch.float64))
    sigmas = karras_sigmas(12, 0.002, 50.0)
    z = 50 * torch.randn(3 * k, n, generator=g, dtype=torch.float64)
    ref, euler = z, z
    for hi, lo in zip(sigmas[:-1], sigmas[1:]):
        ref = heun_step(post, ref, hi, lo, noise=None, cond={})
        euler = euler_step(post, euler, hi, lo, noise=None, cond={})
    out = post.flow(z, sigmas)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert float((out - euler).abs().max()) > 1e-3


def test_domains_remember_a_passed_check_and_their_blocks():
    """A checked layout is not checked again for the same sizes (the cycled filter's case), is
    checked for others, and ``blocks()`` lists each domain's kept indices (every index once)."""
    d = periodic_domains_2d((8, 8), torch.arange(0, 64, 4), radius=2, block=2, obs_radius=1.5)
    d.check(64, 16)
    assert d.__dict__["_checked"] == (64, 16)
    with pytest.raises(ValueError, match="outside the state"):
        d.check(32, 16)
    assert sorted(d.blocks().reshape(-1).tolist()) == list(range(64)) and d.blocks().shape == (16, 4)


def test_random_rotation_is_a_mean_preserving_haar_rotation():
    """``Q`` is orthogonal with ``Q 1 = 1``; over 4,000 draws its average is ``1 1^T / n`` (Haar on the
    complement of 1 averages to 0 there; a fixed or biased rotation would not), and it is not the identity."""
    from sciffusion.assimilate import random_rotation

    g, n = torch.Generator().manual_seed(5), 6
    qs = torch.stack([random_rotation(n, g) for _ in range(4000)])
    eye, ones = torch.eye(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    torch.testing.assert_close(qs[0] @ qs[0].T, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(qs[0] @ ones, ones, rtol=0, atol=1e-12)
    assert float((qs.mean(0) - torch.ones(n, n, dtype=torch.float64) / n).abs().max()) < 0.05
    assert float((qs[0] - eye).abs().max()) > 0.1
    with pytest.raises(ValueError, match="at least 2 members"):
        random_rotation(1)


@pytest.mark.parametrize("space", ["ensemble", "state"])
def test_rotate_keeps_the_analysis_mean_and_covariance(space):
    """``rotate=True`` changes the members but not their mean or covariance (to 1e-10): the same
    analysis, DAPPER's ``rot=True``."""
    x, y, std = _problem()
    kw = dict(domains=periodic_domains(D, OBS, radius=4, block=2, obs_radius=2.0), noise_std=std, space=space,
              steps=8, sigma_max=20.0)
    plain = local_analysis(x, y, generator=torch.Generator().manual_seed(2), **kw)
    rot = local_analysis(x, y, rotate=True, generator=torch.Generator().manual_seed(2), **kw)
    torch.testing.assert_close(rot.mean(0), plain.mean(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cov(rot.reshape(len(rot), -1).T), torch.cov(plain.reshape(len(plain), -1).T),
                               rtol=0, atol=1e-10)
    assert float((rot - plain).abs().max()) > 1e-2


@pytest.mark.parametrize("inflation", [1.0, 1.1])
def test_exact_guidance_is_converged_mmps_and_the_letkf(inflation):
    """``guidance="exact"``: at bandwidth 1 the same analysis as MMPS once its CG has converged
    (10 iterations for at most 5 slots per domain: to 1e-10), and the LETKF's closed form in the limit
    of fine steps (64: under 3e-3 against an update above 1)."""
    x, y, std = _problem()
    domains = periodic_domains(D, OBS, radius=4, block=2, obs_radius=2.0)
    kw = dict(domains=domains, noise_std=std, space="ensemble", sigma_max=20.0, inflation=inflation)
    exact = local_analysis(x, y, steps=16, **kw)  # the default here (linear observations, ensemble space)
    torch.testing.assert_close(exact, local_analysis(x, y, guidance="exact", steps=16, **kw), rtol=0, atol=0)
    mmps = local_analysis(x, y, guidance="mmps", steps=16, cg_iters=10, **kw)
    torch.testing.assert_close(exact, mmps, rtol=0, atol=1e-10)
    assert float((local_analysis(x, y, guidance="mmps", steps=16, cg_iters=1, **kw) - exact).abs().max()) > 1e-3
    letkf = _letkf(x, y, std, domains, inflation, 20.0)
    assert float((letkf - x).abs().max()) > 1.0
    torch.testing.assert_close(local_analysis(x, y, guidance="exact", steps=64, **kw), letkf, rtol=0, atol=3e-3)


def test_exact_guidance_refuses_what_it_cannot_do():
    """A nonlinear function, the state space, CG options and another sampler are refused by name."""
    x, y, std = _problem()
    kw = dict(domains=periodic_domains(D, OBS, radius=2), noise_std=std, guidance="exact")
    with pytest.raises(ValueError, match="linear observations"):
        local_analysis(x, torch.atan(y), function=torch.atan, space="ensemble", **kw)
    with pytest.raises(ValueError, match="space='ensemble'"):
        local_analysis(x, y, **kw)
    with pytest.raises(ValueError, match="cg_iters"):
        local_analysis(x, y, space="ensemble", cg_iters=5, **kw)
    with pytest.raises(ValueError, match="sampler"):
        local_analysis(x, y, space="ensemble", sampler="euler", **kw)
