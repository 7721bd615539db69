"""The SDA smoother: window composition, trajectory posterior on a linear-Gaussian chain, xarray edges.

The reference is a stationary linear-Gaussian Markov chain ``x_{t+1} = A x_t + w_t`` (2-D state,
``A = 0.5 R(0.3)``, ``w ~ N(0, I)``): its windows are Gaussian, so the window prior's denoiser is
exact (:class:`sciffusion.testing.GaussianMixture`), and the posterior of a whole trajectory under
linear observations is Kalman's (batch conditioning, written here).

Composition tolerance (measured with 4,000 draws, 32 Heun steps, MMPS with an exact CG solve, the
same random streams for the composed and the whole-trajectory exact denoiser, L = 12): the SDA
composition moves the posterior mean by at most 0.30 / 0.13 / 0.05 posterior standard deviations
for windows of 3 / 5 / 7 states, and the variance by 5% / 0.7% / 0.1%. The sampler itself (the
exact whole-trajectory denoiser) is within 0.04 sd and 4% of the Kalman posterior (Monte Carlo
error of the max over 24 entries plus the 32-step discretisation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.assimilate import TrajectoryDenoiser, WindowPrior, smooth, train_window_prior
from sciffusion.diffusion import member_generators
from sciffusion.inverse import Mask, sample
from sciffusion.testing import GaussianMixture

L, D, N, STEPS = 12, 2, 1000, 32


def chain_cov(length: int, a: float = 0.5, rot: float = 0.3) -> torch.Tensor:
    """Covariance ``(length * D, length * D)`` of a stationary window: block ``(j, i) = A^{j-i} P``, ``j >= i``."""
    c, s = math.cos(rot), math.sin(rot)
    a_mat = a * torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    p = torch.eye(D, dtype=torch.float64)
    for _ in range(200):  # P = A P A^T + I
        p = a_mat @ p @ a_mat.T + torch.eye(D, dtype=torch.float64)
    cov = torch.zeros(length * D, length * D, dtype=torch.float64)
    for i in range(length):
        for j in range(i, length):
            blk = torch.linalg.matrix_power(a_mat, j - i) @ p
            cov[j * D:(j + 1) * D, i * D:(i + 1) * D] = blk
            cov[i * D:(i + 1) * D, j * D:(j + 1) * D] = blk.T
    return cov


def gaussian(cov: torch.Tensor, length: int) -> GaussianMixture:
    return GaussianMixture(torch.ones(1), torch.zeros(1, len(cov)), cov[None], event_shape=(length, D))


def kalman(cov, rows, y, var):
    """Posterior mean and marginal variances of ``x ~ N(0, cov)`` given ``y = x[rows] + N(0, diag(var))``."""
    h = torch.eye(len(cov), dtype=torch.float64)[rows]
    gain = cov @ h.T @ torch.linalg.inv(h @ cov @ h.T + torch.diag(var))
    return gain @ y, (cov - gain @ h @ cov).diagonal()


@pytest.fixture(scope="module")
def problem():
    cov = chain_cov(L)
    mask = torch.zeros(L, D, dtype=torch.bool)
    mask[::3, 0] = True
    mask[5, 1] = True
    g = torch.Generator().manual_seed(0)
    truth = torch.linalg.cholesky(cov) @ torch.randn(L * D, generator=g, dtype=torch.float64)
    y = truth[mask.reshape(-1)] + 0.5 * torch.randn(int(mask.sum()), generator=g, dtype=torch.float64)
    mean, var = kalman(cov, mask.reshape(-1), y, torch.full((len(y),), 0.25, dtype=torch.float64))
    return cov, mask, y, mean, var


def posterior(denoiser, mask, y, n=N):
    """``n`` draws ``(n, L * D)``; member m is the same random stream in every call (paired comparisons)."""
    z = sample(denoiser, Mask(mask), y, noise_std=0.5, n_members=n, steps=STEPS, sampler="heun",
               cg_iters=int(mask.sum()), generator=member_generators(0, n), event_shape=(L, D), dtype=torch.float64)
    return z.reshape(n, -1)


@pytest.fixture(scope="module")
def exact_draws(problem):
    cov, mask, y, _, _ = problem
    return posterior(gaussian(cov, L), mask, y)


def test_window_as_long_as_trajectory_is_the_window_denoiser():
    """With W = L the composition returns the window denoiser's output bit for bit."""
    window = gaussian(chain_cov(7), 7)
    x = torch.randn(5, 7, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 4.0, 50.0], dtype=torch.float64)
    assert torch.equal(TrajectoryDenoiser(window, 7, 7)(x, sigma), window(x, sigma))


def test_composition_takes_each_state_from_its_centred_window():
    """State i's estimate is the centred window's (edges: the first / last window's), checked by a hand loop."""
    w, k, length = 5, 2, 9
    window = gaussian(chain_cov(w), w)
    x = torch.randn(3, length, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = TrajectoryDenoiser(window, w, length, max_windows=4)(x, 0.7)
    for i in range(length):
        start = min(max(i - k, 0), length - w)
        assert torch.allclose(out[:, i], window(x[:, start:start + w], 0.7)[:, i - start], rtol=0, atol=1e-13)


def test_whole_trajectory_denoiser_samples_the_kalman_posterior(problem, exact_draws):
    """The yardstick: the exact whole-trajectory denoiser through inverse.sample is within 5 MC standard
    errors plus the 32-step sampler error (0.05 sd in the mean, 6% in the variance) of Kalman's posterior."""
    _, _, _, mean, var = problem
    m, v = exact_draws.mean(0), exact_draws.var(0)
    sd = var.sqrt()
    assert ((m - mean) / sd).abs().max() < 5 / math.sqrt(N) + 0.05
    assert (v / var - 1).abs().max() < 5 * math.sqrt(2 / N) + 0.06


def test_composed_window_prior_samples_the_trajectory_posterior(problem, exact_draws):
    """Windows of 7 composed over 12 states: the posterior mean and marginal variance match Kalman's to
    MC error plus the measured composition tolerance (0.05 sd and 0.1%, allowed 0.08 sd and 1% beyond the
    exact denoiser's run with the same random streams); windows of 3 miss it (0.3 sd), so the check can fail."""
    cov, mask, y, mean, var = problem
    sd = var.sqrt()
    z7 = posterior(TrajectoryDenoiser(gaussian(cov[:7 * D, :7 * D], 7), 7, L), mask, y)
    m7, v7 = z7.mean(0), z7.var(0)
    m_full, v_full = exact_draws.mean(0), exact_draws.var(0)
    assert ((m7 - m_full) / sd).abs().max() < 0.08
    assert (v7 / v_full - 1).abs().max() < 0.01
    assert ((m7 - mean) / sd).abs().max() < 5 / math.sqrt(N) + 0.05 + 0.08
    assert (v7 / var - 1).abs().max() < 5 * math.sqrt(2 / N) + 0.06 + 0.01
    z3 = posterior(TrajectoryDenoiser(gaussian(cov[:3 * D, :3 * D], 3), 3, L), mask, y, n=400)
    assert ((z3.mean(0) - exact_draws[:400].mean(0)) / sd).abs().max() > 0.15


# ------------------------------------------------------------------ xarray edges
def physical_prior(window: int = 7) -> WindowPrior:
    """The chain in physical units ``x = mean + std * z`` (mean (1, -2), std (2, 0.5)), exact window denoiser."""
    den = gaussian(chain_cov(window), window)
    return WindowPrior(den, window, (D,), torch.tensor([1.0, -2.0], dtype=torch.float64),
                       torch.tensor([2.0, 0.5], dtype=torch.float64), (window, D), dt=0.5, dims=("component",),
                       coords={"component": np.array(["u", "v"])}, attrs={"name": "state"})


def observed(times, values):
    return xr.DataArray(np.asarray(values, dtype=np.float64)[:, None], dims=("time", "sensor"),
                        coords={"time": np.asarray(times, dtype=np.float64)})


def test_smooth_matches_kalman_in_physical_units_with_missing_and_per_entry_noise():
    """smooth() on xarray (normalisation, observations every 3rd state, one NaN, per-time noise) agrees with
    the Kalman posterior of the physical chain; seeds are reproducible and member m is the same draw for any
    n_members."""
    prior, length = physical_prior(), 12
    cov = chain_cov(length)
    scale = prior.std.repeat(length)
    cov_x = scale[:, None] * cov * scale[None]
    mean_x = prior.mean.repeat(length)
    times = 0.5 * np.arange(length)
    obs_t = np.arange(0, length, 3)
    values = 1.0 + 2.0 * np.array([0.8, -1.2, 0.3, 1.5])
    values[2] = np.nan
    std = np.array([[0.5], [1.0], [0.5], [0.7]])
    obs = observed(times[obs_t], values)
    out = smooth(prior, obs, operator=Mask(torch.tensor([True, False])), noise_std=std, times=times, n_members=400,
                 seed=3, steps=STEPS, sampler="heun", cg_iters=4)
    assert out.dims == ("time", "member", "component") and out.shape == (length, 400, D)
    assert list(out["component"].values) == ["u", "v"] and np.allclose(out["time"], times)
    keep = ~np.isnan(values)
    rows = torch.as_tensor(obs_t[keep] * D)
    y = torch.as_tensor(values[keep]) - mean_x[rows]
    m, var = kalman(cov_x, rows, y, torch.as_tensor(std[keep, 0] ** 2))
    got = out.values.transpose(1, 0, 2).reshape(400, -1)
    z = (got.mean(0) - (mean_x + m).numpy()) / var.sqrt().numpy()
    assert np.abs(z).max() < 5 / math.sqrt(400) + 0.15
    assert np.abs(got.var(0, ddof=1) / var.numpy() - 1).max() < 5 * math.sqrt(2 / 400) + 0.08
    again = smooth(prior, obs, operator=Mask(torch.tensor([True, False])), noise_std=std, times=times, n_members=2,
                   seed=3, steps=4, sampler="heun", cg_iters=4)
    same = smooth(prior, obs, operator=Mask(torch.tensor([True, False])), noise_std=std, times=times, n_members=3,
                  seed=3, steps=4, sampler="heun", cg_iters=4)
    assert np.array_equal(again.values, same.values[:, :2])


@pytest.mark.parametrize("case, match", [
    ("off_grid", "observation time 1.25 .* not on the trajectory's time grid"),
    ("negative_noise", "noise_std"),
    ("operator_shape", "operator .* observations"),
    ("short", "fewer than the prior's window"),
    ("grid_step", "dt=0.5"),
])
def test_smooth_refuses_bad_input_naming_it(case, match):
    prior, times = physical_prior(), 0.5 * np.arange(12)
    obs, op, std, grid = observed([0.0, 1.5, 3.0], [1.0, 2.0, 3.0]), Mask(torch.tensor([True, False])), 0.5, times
    if case == "off_grid":
        obs = observed([0.0, 1.25], [1.0, 2.0])
    elif case == "negative_noise":
        std = -0.1
    elif case == "operator_shape":
        op = Mask(torch.tensor([True, True]))
    elif case == "short":
        grid = times[:4]
        obs = observed([0.0, 1.5], [1.0, 2.0])
    else:
        grid = 0.25 * np.arange(12)
    with pytest.raises(ValueError, match=match):
        smooth(prior, obs, operator=op, noise_std=std, times=grid, n_members=2, steps=2)


def test_train_window_prior_from_tensors_learns_the_window_statistics():
    """A tiny window prior trained from tensors denoises held-out noisy windows better than the identity
    and records the normalisation, dims and dt."""
    cov = chain_cov(40)
    g = torch.Generator().manual_seed(4)
    traj = (torch.linalg.cholesky(cov) @ torch.randn(40 * D, 64, generator=g, dtype=torch.float64)).T
    traj = (3.0 + 2.0 * traj).reshape(64, 40, D)
    prior = train_window_prior(traj, window=3, steps=100, net={"name": "MLP", "kwargs": {"width": 64, "depth": 2}},
                               dt=0.1, progress=False, batch_size=64, lr=2e-3, warmup_steps=10, ema_decay=0.9)
    assert prior.dt == 0.1 and prior.window == 3 and prior.state_shape == (D,)
    assert torch.allclose(prior.mean, torch.full((D,), 3.0, dtype=torch.float64), atol=0.3)
    den = prior.window_denoiser()
    z0 = ((traj[:8, :3] - prior.mean) / prior.std).to(torch.float32)
    noisy = z0 + torch.randn(z0.shape, generator=g)
    with torch.no_grad():
        err = (den(noisy, torch.ones(8)) - z0).pow(2).mean()
    assert err < 0.8 * (noisy - z0).pow(2).mean()
