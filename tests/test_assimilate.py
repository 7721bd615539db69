"""sciffusion.assimilate: the cycled filter against the exact Kalman filter, the prior's moments, bad input."""

import numpy as np
import pytest
import torch

from sciffusion.assimilate import analysis, cycle, ensemble_prior, gaspari_cohn
from sciffusion.inverse import Linear, Mask

M = np.array([[0.9, 0.3, 0.0], [-0.3, 0.8, 0.1], [0.0, 0.2, 0.95]])
Q = 0.2 * np.eye(3)
H = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0]])
STD = np.array([0.5, 0.3])


def _observations(t=4, seed=1):
    rng = np.random.default_rng(seed)
    x, ys = np.zeros(3), []
    for _ in range(t):
        x = M @ x + rng.multivariate_normal(np.zeros(3), Q)
        ys.append(H @ x + STD * rng.standard_normal(2))
    ys = np.array(ys)
    ys[1, 0] = np.nan  # a missing observation
    return ys


def _kalman(ys, m, p, q=Q):
    """The exact Kalman filter (numpy, independent of sciffusion): analysis means and covariances
    (``q``: the model noise covariance; 0 for the deterministic model)."""
    out = []
    for y in ys:
        m, p = M @ m, M @ p @ M.T + q
        ok = ~np.isnan(y)
        h, r = H[ok], np.diag(STD[ok] ** 2)
        k = p @ h.T @ np.linalg.inv(h @ p @ h.T + r)
        m, p = m + k @ (y[ok] - h @ m), p - k @ h @ p
        out.append((m, p))
    return out


@pytest.mark.parametrize("operator, start", [("linear", "members"), ("callable", "members"), ("linear", "noise")])
def test_linear_gaussian_filter_matches_the_kalman_filter(operator, start):
    """Analysis mean and covariance of the ensemble filter equal the Kalman filter's to Monte Carlo
    error (N = 4000: mean within 5 standard errors, covariance within 0.1 of its scale), at every
    cycle, with a missing observation and per-entry noise; the operator as a Linear module or as a
    plain callable (the linearised path); the members transported or fresh posterior draws."""
    n, g = 4000, torch.Generator().manual_seed(0)
    m0, p0 = np.ones(3), 0.5 * np.eye(3)
    x0 = torch.as_tensor(np.random.default_rng(2).multivariate_normal(m0, p0, size=n))
    chol = torch.as_tensor(np.linalg.cholesky(Q))
    mt = torch.as_tensor(M)

    def forecast(x):
        return x @ mt.T + torch.randn(x.shape, generator=g, dtype=x.dtype) @ chol.T

    ht = torch.as_tensor(H)
    op = Linear(ht) if operator == "linear" else (lambda x: x @ ht.T)
    ys = _observations()
    res = cycle(forecast, x0, op, torch.as_tensor(ys), noise_std=torch.as_tensor(STD), n_cycles=len(ys),
                generator=g, steps=32, sigma_max=80.0, cg_iters=4, start=start)
    for t, (m, p) in enumerate(_kalman(ys, m0, p0)):
        xa = res.analysis[t].numpy()
        assert np.all(np.abs(xa.mean(0) - m) < 5 * np.sqrt(np.diag(p) / n) + 1e-3), (t, xa.mean(0), m)
        assert np.abs(np.cov(xa.T) - p).max() < 0.1 * np.diag(p).max(), (t, np.cov(xa.T), p)


@pytest.mark.parametrize("bandwidth", [1.0, 0.5, 0.0])
def test_ensemble_prior_keeps_the_inflated_ensemble_moments(bandwidth):
    """Mixture mean = ensemble mean and covariance = inflation^2 * sample covariance (tapered), any bandwidth."""
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 2
    dist = torch.arange(5.0)[:, None] - torch.arange(5.0)[None]
    loc = gaspari_cohn(dist, 2.0)
    prior = ensemble_prior(x, bandwidth=bandwidth, inflation=1.1, localization=loc)
    torch.testing.assert_close(prior.mean(), x.mean(0))
    expected = 1.21 * torch.cov(x.T) * loc
    torch.testing.assert_close(prior.cov(), expected if bandwidth == 1.0 else 1.21 * torch.cov(x.T) * (
        bandwidth**2 * loc + (1 - bandwidth**2)))


def test_an_indefinite_tapered_covariance_is_clipped_to_the_nearest_covariance_and_a_valid_one_is_kept():
    """On a ring of 40 the arc-distance Gaspari-Cohn taper of radius 16 is not positive semi-definite, and
    the tapered covariance of an ensemble correlated along the whole ring is then indefinite: the prior's covariance is that matrix
    with its negative eigenvalues set to 0 (by hand with numpy's eigh), where the GaussianMixture alone
    refuses it; with the chordal taper (valid at every radius) the tapered covariance is kept as is."""
    from sciffusion.assimilate import ring_taper
    from sciffusion.testing import GaussianMixture
    g = torch.Generator().manual_seed(0)  # members nearly uniform along the ring: the taper's own shape
    x = torch.randn(24, 1, generator=g, dtype=torch.float64) + 0.01 * torch.randn(24, 40, generator=g, dtype=torch.float64)
    tapered = torch.cov(x.T) * ring_taper(40, 16.0)
    lam, q = np.linalg.eigh(tapered.numpy())
    assert lam.min() < -1e-3 * lam.max()  # the case: indefinite
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixture(torch.ones(1), x.mean(0)[None], tapered[None])
    prior = ensemble_prior(x, localization=ring_taper(40, 16.0))
    np.testing.assert_allclose(prior.cov().numpy(), (q * lam.clip(min=0)) @ q.T, atol=1e-12)
    valid = ring_taper(40, 16.0, metric="chord")
    torch.testing.assert_close(ensemble_prior(x, localization=valid).cov(), torch.cov(x.T) * valid)


def test_gaspari_cohn_is_one_at_zero_and_zero_beyond_twice_the_radius():
    assert gaspari_cohn(torch.tensor([0.0, 4.0, 9.0]), 2.0).tolist() == [1.0, 0.0, 0.0]
    assert abs(float(gaspari_cohn(torch.tensor(2.0), 2.0)) - 5 / 24) < 1e-12


def test_all_missing_observation_keeps_the_forecast():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = analysis(x, Mask(torch.tensor([True, False, True, False])), torch.full((2,), float("nan")), noise_std=1.0)
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("case, match", [
    ("time", "time axis"), ("shape", "observations have shape"), ("noise", "noise_std must be finite and non-negative"),
    ("grid", "cannot be applied to the state"), ("noise_shape", "noise_std of shape"),
])
def test_bad_input_raises_naming_it_before_any_cycle(case, match):
    calls = []
    x = torch.zeros(4, 6, dtype=torch.float64) + torch.arange(4.0)[:, None]
    op, ys, std = Mask(torch.tensor([True, False] * 3)), torch.zeros(5, 3), 1.0
    if case == "shape":
        ys = torch.zeros(5, 4)
    elif case == "noise":
        std = torch.tensor([1.0, -0.1, 1.0])
    elif case == "grid":
        op = Mask(torch.ones(8, dtype=torch.bool))
    elif case == "noise_shape":
        std = torch.ones(7, 3)
    with pytest.raises(ValueError, match=match):
        cycle(lambda e: calls.append(1) or e, x, op, ys, noise_std=std, n_cycles=6 if case == "time" else 5)
    assert not calls


@pytest.mark.parametrize("inflation", [1.0, 1.1])
def test_uninformative_observations_return_the_inflated_members(inflation):
    """With observations of huge noise the analysis is the prior: start="members" transports each
    forecast member to itself, its anomaly inflated by ``inflation``."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 3
    out = analysis(x, Mask(torch.ones(4, dtype=torch.bool)), torch.zeros(4), noise_std=1e6, inflation=inflation,
                   steps=24, sigma_max=80.0)
    torch.testing.assert_close(out, x.mean(0) + inflation * (x - x.mean(0)), atol=0.02, rtol=0)


@pytest.mark.parametrize("lag, mda", [(2, False), (3, False), (2, True), (3, True)])
def test_lagged_analysis_matches_the_kalman_filter_of_a_deterministic_linear_model(lag, mda):
    """With lag=K each analysis conditions the analysis of K cycles earlier on the window's observations
    through the model and carries it forward: for a linear model without noise and a Gaussian prior that
    is the exact Kalman filter, every observation used once. Mean within 5 standard errors and covariance
    within 0.1 of its scale at every cycle (N = 4000, a missing observation, per-entry noise). Using an
    observation twice (or dropping the window's earlier ones) would shrink (or widen) the covariance by
    far more than that. With mda=True (every observation used in the lag windows that hold it, tempered)
    the output is still that Kalman filter: an observation's tempered uses must add up to one."""
    n, g = 4000, torch.Generator().manual_seed(0)
    m0, p0 = np.ones(3), 0.5 * np.eye(3)
    x0 = torch.as_tensor(np.random.default_rng(2).multivariate_normal(m0, p0, size=n))
    mt, ht = torch.as_tensor(M), torch.as_tensor(H)
    ys = _observations(t=5)
    res = cycle(lambda x: x @ mt.T, x0, Linear(ht), torch.as_tensor(ys), noise_std=torch.as_tensor(STD), lag=lag,
                mda=mda, generator=g, steps=32, sigma_max=80.0, cg_iters=4)
    for t, (m, p) in enumerate(_kalman(ys, m0, p0, q=0.0)):
        xa = res.analysis[t].numpy()
        assert np.all(np.abs(xa.mean(0) - m) < 5 * np.sqrt(np.diag(p) / n) + 1e-3), (t, xa.mean(0), m)
        assert np.abs(np.cov(xa.T) - p).max() < 0.1 * np.diag(p).max(), (t, np.cov(xa.T), p)
    # the forecast of time t is the prior of time t - lag carried forward: at t = 0 the initial ensemble's
    torch.testing.assert_close(res.forecast[0], x0 @ mt.T)


@pytest.mark.parametrize("lag", [2, 3, 5])
def test_mda_weights_use_every_observation_exactly_once(lag):
    """The schedule of mda=True, by hand-kept books: at each cycle the output's weights are 1 minus what
    the chain's steps have used of each window observation, the chain gives each ``1 / lag`` (its first, all
    it has left), waits at the initial time until the window is ``lag`` long, and by the time an
    observation leaves the window its chain weights add to exactly 1."""
    from sciffusion.assimilate.cycle import mda_weights
    T = 12
    used = np.zeros(T)
    for t in range(T):
        start, remaining, weight = mda_weights(t, lag)
        assert start == max(-1, t - lag)
        np.testing.assert_allclose(remaining.numpy(), 1 - used[start + 1:t + 1], atol=1e-12)
        if t < lag - 1:
            assert weight is None
            continue
        expected = np.full(lag, 1 / lag)
        expected[0] = 1 - used[start + 1]
        np.testing.assert_allclose(weight.numpy(), expected, atol=1e-12)
        used[start + 1:t + 1] += weight.numpy()
    np.testing.assert_allclose(used[:T - lag + 1], 1.0, atol=1e-12)  # the observations that left the window
    assert np.all(used[T - lag + 1:] < 1)


@pytest.mark.parametrize("case, error, match", [
    ("zero", ValueError, "lag must be an integer >= 1"),
    ("numpy", ValueError, "cannot be differentiated in torch"),
    ("domains", TypeError, "does not go with domains="),
    ("mda", ValueError, "it needs lag >= 2"),
    ("mda_inflation", ValueError, "mda is off"),
])
def test_bad_lag_raises_naming_it_before_any_cycle(case, error, match):
    from sciffusion.assimilate import periodic_domains
    calls = []
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op, ys = Mask(torch.ones(6, dtype=torch.bool)), torch.zeros(5, 6)

    def forecast(e):
        calls.append(1)
        return torch.as_tensor(np.asarray(e.detach()) * 0.9) if case == "numpy" else 0.9 * e
    kw = {"lag": 0 if case == "zero" else 1 if case == "mda" else 2}
    if case == "mda":
        kw["mda"] = True
    elif case == "mda_inflation":
        kw["mda_inflation"] = 1.1
    if case == "domains":
        kw["domains"] = periodic_domains(6, torch.arange(6), radius=1)
    with pytest.raises(error, match=match):
        cycle(forecast, x, op, ys, noise_std=1.0, **kw)
    assert len(calls) <= 1  # at most the differentiability check's one call; no cycle ran
