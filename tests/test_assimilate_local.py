"""sciffusion.assimilate.local: the domain-localised (LETKF-style) analysis, batched over domains."""

import pytest
import torch

from sciffusion.assimilate import Domains, analysis, gaspari_cohn, local_analysis, periodic_domains
from sciffusion.assimilate.local import periodic_domains_2d

D = 20
JJ = torch.arange(0, D, 2)


def _ensemble(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ens = 1.0 + 2.0 * torch.randn(n, D, generator=g, dtype=torch.float64)
    y = torch.atan(torch.randn(D, generator=g, dtype=torch.float64)[JJ])
    return ens, y


@pytest.mark.parametrize("case", [
    {"noise_std": 0.5, "inflation": 1.1},
    {"noise_std": 0.5, "bandwidth": 0.7},
    {"noise_std": 0.5, "taper": 3.0},  # B-localisation: the window taper is analysis()'s localization
    {"noise_std": "per-entry", "cg_iters": 12},  # rows are whitened: the same once the CG has converged
    {"noise_std": 1.0, "start": "noise", "sampler": "ddim", "missing": True},
])
def test_one_domain_covering_the_state_is_the_global_analysis(case):
    """One domain whose window is the whole state runs the same computation as ``analysis``
    (arctan of every second variable, nonlinear; same seed): equal to round-off. With one std per
    observation the local rows are whitened, which changes the CG's Jacobi preconditioner: equal
    once the CG has converged (``cg_iters`` >= 10 observations)."""
    ens, y = _ensemble()
    case = dict(case)
    if case.pop("missing", False):
        y[[1, 4]] = float("nan")
    if case["noise_std"] == "per-entry":
        case["noise_std"] = torch.linspace(0.3, 1.2, len(JJ), dtype=torch.float64)
    taper = case.pop("taper", None)
    common = {"steps": 8, "cg_iters": 3, **case}  # 3 CG iterations for 10 observations: not converged
    loc = None
    if taper is not None:
        i = torch.arange(D)
        dist = (i[:, None] - i[None]).abs()
        loc = gaspari_cohn(torch.minimum(dist, D - dist), taper)
    a = analysis(ens, lambda x: torch.atan(x[:, JJ]), y, generator=torch.Generator().manual_seed(3),
                 localization=loc, **common)
    domains = periodic_domains(D, JJ, radius=D, block=D, taper_radius=taper)
    b = local_analysis(ens, y, domains=domains, function=torch.atan, generator=torch.Generator().manual_seed(3),
                       **common)
    assert float((a - ens).abs().max()) > 0.1  # the analysis moved the members
    torch.testing.assert_close(b, a, rtol=0, atol=1e-11)


def _linear_gaussian(n, exact_moments, d=40, std=0.5):
    """40 points on a ring, exponential correlations of length 1 (diagonally dominant), every second
    point observed with noise std 0.5; ``n`` members from the prior (``exact_moments``: whitened so
    their sample mean and covariance are the prior's exactly). Returns the members, ``y``, the
    observed points and the exact Kalman mean and covariance."""
    g = torch.Generator().manual_seed(1)
    i = torch.arange(d)
    dist = (i[:, None] - i[None]).abs()
    cov = torch.exp(-torch.minimum(dist, d - dist).double())
    mu = torch.linspace(-1, 1, d, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    xi = torch.randn(n, d, generator=g, dtype=torch.float64)
    if exact_moments:
        xi = xi - xi.mean(0)
        white = torch.linalg.cholesky(xi.T @ xi / (n - 1))
        xi = torch.linalg.solve_triangular(white, xi.T, upper=False).T
    ens = mu + xi @ chol.T
    jj = torch.arange(0, d, 2)
    h = torch.eye(d, dtype=torch.float64)[jj]
    truth = mu + chol @ torch.randn(d, generator=g, dtype=torch.float64)
    y = truth[jj] + std * torch.randn(len(jj), generator=g, dtype=torch.float64)
    gain = cov @ h.T @ torch.linalg.inv(h @ cov @ h.T + std**2 * torch.eye(len(jj), dtype=torch.float64))
    return ens, y, jj, mu + gain @ (y - h @ mu), cov - gain @ h @ cov


def test_local_analysis_of_exact_moment_members_is_the_kalman_filter():
    """Members with exactly the prior's mean and covariance: the local analysis (radius 6, blocks
    of 2) has the exact Kalman mean and variances up to the sampler's 1/sigma_max and step errors
    (0.009 at sigma_max = 80, the same as the global analysis'); with radius 0 the unobserved points
    get no update and miss it by 0.6."""
    ens, y, jj, kalman, post = _linear_gaussian(64, exact_moments=True)
    opts = {"noise_std": 0.5, "steps": 24, "sigma_max": 80.0, "cg_iters": 8}
    out = local_analysis(ens, y, domains=periodic_domains(40, jj, radius=6, block=2), **opts)
    assert float((out.mean(0) - kalman).abs().max()) < 0.02
    assert float((out.var(0) - post.diagonal()).abs().max()) < 0.05
    bad = local_analysis(ens, y, domains=periodic_domains(40, jj, radius=0, block=1), **opts)
    assert float((bad.mean(0) - kalman).abs().max()) > 0.3


def test_local_analysis_matches_the_kalman_mean_within_monte_carlo_error():
    """800 members drawn from the prior: the local analysis mean is the exact Kalman mean to within
    4 standard errors of an 800-member estimate (posterior and prior std over sqrt(N)); with
    radius 0 it is not."""
    n = 800
    ens, y, jj, kalman, post = _linear_gaussian(n, exact_moments=False)
    tol = 4 * (float(post.diagonal().max().sqrt()) + 1.0) / n**0.5  # prior variances are 1
    opts = {"noise_std": 0.5, "steps": 10, "cg_iters": 8}
    good = local_analysis(ens, y, domains=periodic_domains(40, jj, radius=6, block=2), **opts).mean(0)
    assert float((good - kalman).abs().max()) < tol
    bad = local_analysis(ens, y, domains=periodic_domains(40, jj, radius=0, block=1), **opts).mean(0)
    assert float((bad - kalman).abs().max()) > 2 * tol


def test_domains_without_observations_keep_their_forecast():
    """A domain whose window holds no (non-missing) observation returns its forecast members unchanged."""
    ens, y = _ensemble()
    y[:] = float("nan")
    y[0] = 0.3  # only grid point 0 is observed
    domains = periodic_domains(D, JJ, radius=1, block=2)
    out = local_analysis(ens, y, domains=domains, function=torch.atan, noise_std=1.0, steps=6, cg_iters=2)
    far = torch.arange(4, 16)  # windows of these blocks do not reach point 0
    torch.testing.assert_close(out[:, far], ens[:, far], rtol=0, atol=0)
    assert float((out[:, :2] - ens[:, :2]).abs().max()) > 1e-3


def test_periodic_domains_layout_and_observation_weights():
    """Windows wrap around the ring, slots point at the observed points, the Gaspari-Cohn weight is
    1 inside the block and 0 beyond twice the radius from it."""
    dom = periodic_domains(10, torch.tensor([0, 3, 9]), radius=2, block=1, obs_radius=1.0)
    assert dom.windows[0].tolist() == [8, 9, 0, 1, 2]
    assert dom.keep[0].tolist() == [False, False, True, False, False]
    used = dom.weight[0] > 0
    assert sorted(dom.obs[0][used].tolist()) == [0, 2]  # obs 0 (point 0, weight 1) and obs 2 (point 9)
    assert sorted(dom.windows[0][dom.obs_pos[0][used]].tolist()) == [0, 9]  # the points they read
    assert float(dom.weight[0].max()) == 1.0
    dom = periodic_domains(10, torch.tensor([3]), radius=4, block=1, obs_radius=1.0)
    assert float(dom.weight[0, 0]) == 0.0  # distance 3 > 2 * obs_radius
    dom = periodic_domains(10, torch.tensor([1, 4, 6]), radius=2, block=5, obs_radius=1.0)
    assert dom.weight[0].tolist() == [1.0, 1.0, 0.0]  # points 1 and 4 in block 0..4, point 6 two away


def test_bad_inputs_name_the_culprit():
    ens, y = _ensemble()
    with pytest.raises(ValueError, match="radius must be a non-negative integer"):
        periodic_domains(D, JJ, radius=-1)
    with pytest.raises(ValueError, match="radius must be a non-negative integer"):
        periodic_domains(D, JJ, radius=1.5)
    with pytest.raises(ValueError, match="block must be a positive integer dividing the grid size 20"):
        periodic_domains(D, JJ, radius=2, block=3)
    with pytest.raises(ValueError, match="obs_radius must be positive"):
        periodic_domains(D, JJ, radius=2, obs_radius=0)
    with pytest.raises(ValueError, match="obs_index holds grid points outside"):
        periodic_domains(D, torch.tensor([0, 20]), radius=2)
    dom = periodic_domains(D, JJ, radius=2, block=2)
    twice = Domains(dom.windows, dom.keep | (torch.arange(dom.windows.shape[1]) == 0), dom.obs, dom.obs_pos,
                    dom.weight)
    with pytest.raises(ValueError, match="keep every state index exactly once"):
        local_analysis(ens, y, domains=twice, noise_std=1.0)
    with pytest.raises(ValueError, match="noise_std must be a scalar or one std per observation"):
        local_analysis(ens, y, domains=dom, noise_std=torch.ones(3))
    with pytest.raises(ValueError, match="noise_std must be finite and positive"):
        local_analysis(ens, y, domains=dom, noise_std=-1.0)
    with pytest.raises(ValueError, match="Domains.obs holds indices outside the 9 observations"):
        local_analysis(ens, y[:9], domains=dom, noise_std=1.0)


def test_cycle_with_domains_runs_the_local_analysis_each_cycle_and_checks_the_operator():
    """``cycle(..., domains=, function=)`` is the loop forecast -> ``local_analysis`` (same generator
    draws, bit for bit), and an operator that observes other entries than the domains read is
    refused before any cycle runs."""
    from sciffusion.assimilate import cycle

    ens, _ = _ensemble(n=6, seed=4)
    g = torch.Generator().manual_seed(5)
    obs = torch.atan(torch.randn(3, D, generator=g, dtype=torch.float64)[:, JJ])
    domains = periodic_domains(D, JJ, radius=4, block=2, obs_radius=3.0)
    op = lambda x: torch.atan(x[:, JJ])  # noqa: E731 (the same pointwise observation as the domains)
    forecast = lambda x: 0.9 * x.roll(1, dims=1)  # noqa: E731
    kw = {"steps": 6, "cg_iters": 2}
    out = cycle(forecast, ens, op, obs, noise_std=0.5, domains=domains, function=torch.atan,
                generator=torch.Generator().manual_seed(9), **kw)
    x, gen = ens, torch.Generator().manual_seed(9)
    for t in range(3):
        x = local_analysis(forecast(x), obs[t], domains=domains, noise_std=0.5, function=torch.atan, generator=gen, **kw)
        assert torch.equal(out.analysis[t], x)
    assert not torch.equal(out.analysis[0], forecast(ens))  # the observations did something
    other = lambda x: torch.atan(x[:, JJ + 1])  # noqa: E731
    with pytest.raises(ValueError, match="pointwise observation"):
        cycle(forecast, ens, other, obs, noise_std=0.5, domains=domains, function=torch.atan)
    with pytest.raises(TypeError, match="goes with domains="):
        cycle(forecast, ens, op, obs, noise_std=0.5, function=torch.atan)


def _brute_force_2d(shape, obs_index, radius, block, obs_radius):
    """Each domain's window, kept points and observation weights by loops over grid points."""
    ny, nx = shape
    per = lambda a, n: min(abs(a) % n, n - abs(a) % n)  # noqa: E731
    out = []
    for by in range(0, ny, block):
        for bx in range(0, nx, block):
            wy = range(by - radius, by + block + radius) if block + 2 * radius < ny else range(ny)
            wx = range(bx - radius, bx + block + radius) if block + 2 * radius < nx else range(nx)
            window = {(y % ny) * nx + x % nx for y in wy for x in wx}
            kept = {y * nx + x for y in range(by, by + block) for x in range(bx, bx + block)}
            weights = {}
            for j, o in enumerate(obs_index.tolist()):
                if o in window:
                    dist = min((per(o // nx - y, ny) ** 2 + per(o % nx - x, nx) ** 2) ** 0.5
                               for y in range(by, by + block) for x in range(bx, bx + block))
                    weights[j] = (o, float(gaspari_cohn(torch.tensor(dist, dtype=torch.float64), obs_radius)))
            out.append((window, kept, weights))
    return out


@pytest.mark.parametrize("radius, block", [(1, 2), (2, 3), (0, 1), (5, 3)])
def test_periodic_domains_2d_equals_a_brute_force_construction(radius, block):
    """Windows, kept blocks, observation slots (which observation, which window point) and
    Gaspari-Cohn weights by 2-D periodic distance to the block agree with loops over the grid
    (6 x 12 grid, so a radius-5 halo wraps the short axis whole; irregular observation points)."""
    shape = (6, 12)
    obs_index = torch.tensor([0, 5, 13, 22, 30, 41, 47, 50, 59, 66, 71])
    dom = periodic_domains_2d(shape, obs_index, radius=radius, block=block, obs_radius=1.5)
    dom.check(72, len(obs_index))
    brute = _brute_force_2d(shape, obs_index, radius, block, 1.5)
    assert dom.windows.shape[0] == len(brute)
    for k, (window, kept, weights) in enumerate(brute):
        assert set(dom.windows[k].tolist()) == window
        assert set(dom.windows[k][dom.keep[k]].tolist()) == kept
        used = dom.weight[k] > 0
        got = {int(j): (int(dom.windows[k, p]), float(wt)) for j, p, wt in
               zip(dom.obs[k][used], dom.obs_pos[k][used], dom.weight[k][used])}
        want = {j: v for j, v in weights.items() if v[1] > 0}
        assert got.keys() == want.keys()
        for j in want:
            assert got[j][0] == want[j][0]
            assert got[j][1] == pytest.approx(want[j][1], abs=1e-12)


def test_periodic_domains_2d_taper_and_whole_grid_domain_is_the_global_analysis():
    """One 6 x 6 domain covering a 6 x 6 grid, with the window taper by 2-D periodic distance, is
    ``analysis`` with that taper as its localisation (arctan of every second point of every
    second row), to round-off."""
    shape, n = (6, 6), 8
    g = torch.Generator().manual_seed(2)
    ens = 1.0 + 2.0 * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    obs_index = torch.tensor([y * 6 + x for y in range(0, 6, 2) for x in range(0, 6, 2)])
    y = torch.atan(torch.randn(len(obs_index), generator=g, dtype=torch.float64))
    iy, ix = torch.arange(36) // 6, torch.arange(36) % 6
    per = lambda a: torch.minimum(a.abs(), 6 - a.abs())  # noqa: E731
    dist = (per(iy[:, None] - iy[None]) ** 2 + per(ix[:, None] - ix[None]) ** 2).double().sqrt()
    common = {"noise_std": 0.5, "steps": 8, "cg_iters": 3}
    a = analysis(ens, lambda x: torch.atan(x.reshape(x.shape[0], 36)[:, obs_index]), y,
                 localization=gaspari_cohn(dist, 2.0), generator=torch.Generator().manual_seed(3), **common)
    dom = periodic_domains_2d(shape, obs_index, radius=3, block=6, taper_radius=2.0)
    b = local_analysis(ens, y, domains=dom, function=torch.atan, generator=torch.Generator().manual_seed(3), **common)
    assert float((a - ens).abs().max()) > 0.1
    torch.testing.assert_close(b, a, rtol=0, atol=1e-11)


def test_periodic_domains_2d_bad_inputs_name_the_culprit():
    with pytest.raises(ValueError, match="block"):
        periodic_domains_2d((6, 8), [0], radius=1, block=4)
    with pytest.raises(ValueError, match="radius"):
        periodic_domains_2d((6, 6), [0], radius=-1)
    with pytest.raises(ValueError, match="obs_index"):
        periodic_domains_2d((6, 6), [36], radius=1)
    with pytest.raises(ValueError, match="obs_radius"):
        periodic_domains_2d((6, 6), [0], radius=1, obs_radius=0)
