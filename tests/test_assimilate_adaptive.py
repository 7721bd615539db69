"""Adaptive EnKF-N inflation (``sciffusion.assimilate.adaptive``, ``local_analysis(enkf_n=...)``):
the inflation is the minimiser of the EnKF-N dual cost (an independent SVD and scipy minimiser,
and DAPPER's own ``effective_N`` where DAPPER is installed), and each domain's analysis is the
LETKF's at that domain's inflation."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from sciffusion.assimilate import local_analysis, periodic_domains
from sciffusion.assimilate.adaptive import enkf_n_inflation
from test_assimilate_ensemble_space import D, N, OBS, _letkf, _problem


def dual_cost_minimiser(y_anom: np.ndarray, dy: np.ndarray, x_n: float) -> float:
    """Bocquet et al. (2015)'s dual EnKF-N cost with DAPPER's mode-corrected hyperprior, from an SVD
    of the whitened anomalies ``(N, m)``, minimised by bounded Brent."""
    n, n1 = y_anom.shape[0], y_anom.shape[0] - 1
    _, s, vt = np.linalg.svd(y_anom, full_matrices=False)
    du = vt @ dy
    s2 = np.zeros(n)
    s2[: len(s)] = s**2
    e_n, c_l = (n + 1) / n, n / n1
    mc = math.sqrt((e_n / c_l) ** (np.mean(1 / (s2 + n1)) * n1))
    e_n, c_l = e_n / mc * x_n, c_l * mc * x_n

    def cost(l):
        return np.sum(du**2 / (l**2 * s[: len(du)] ** 2 + n1)) + e_n / l**2 + c_l * np.log(l**2)

    return minimize_scalar(cost, bounds=(0.2, 5.0), method="bounded", options={"xatol": 1e-10}).x


@pytest.mark.parametrize("n, m, spread, x_n", [(24, 256, 0.1, 1.0), (24, 256, 0.1, 2.0), (10, 5, 1.0, 1.0),
                                               (10, 30, 0.3, 3.0), (8, 3, 0.5, 1.5)])
def test_the_inflation_minimises_the_dual_cost(n, m, spread, x_n):
    rng = np.random.default_rng(n + m)
    e = rng.normal(size=(n, m)) * spread
    y_anom, dy = e - e.mean(0), 1.3 * rng.normal(size=m)
    got = float(enkf_n_inflation(torch.tensor(y_anom)[None], torch.tensor(dy)[None], x_n)[0])
    assert got == pytest.approx(dual_cost_minimiser(y_anom, dy, x_n), abs=2e-4)  # Newton's xtol is 1e-4
    assert got != pytest.approx(1.0, abs=1e-3)  # it does inflate
    try:
        from dapper.da_methods.ensemble import effective_N
    except ImportError:
        return
    assert got == pytest.approx(math.sqrt((n - 1) / effective_N(y_anom, dy, x_n, 0)), rel=1e-12)


def domain_inflations(x, y, std, domains, x_n):
    """``(l_j, kept state indices)`` of every domain: the dual-cost minimiser on the observations it sees
    (positive weight, untapered, missing ones left out)."""
    mean = x.mean(0)
    for j in range(domains.windows.shape[0]):
        seen = (domains.weight[j] > 0) & ~torch.isnan(y[domains.obs[j]])
        read = domains.windows[j][domains.obs_pos[j]][seen]
        sd = std[domains.obs[j]][seen]
        l_j = dual_cost_minimiser(((x[:, read] - mean[read]) / sd).numpy(),
                                  ((y[domains.obs[j]][seen] - mean[read]) / sd).numpy(), x_n)
        yield l_j, domains.windows[j][domains.keep[j]]


def test_each_domain_is_the_letkf_at_its_own_inflation():
    """local_analysis(space="ensemble", enkf_n=2) analyses each domain's block as the closed-form LETKF
    with that domain's inflation, which is the dual-cost minimiser on the observations it sees
    (positive weight, untapered, the missing one left out)."""
    x, y, std = _problem(1)
    domains = periodic_domains(D, OBS, radius=4, block=4, obs_radius=2.0)
    xa = local_analysis(x, y, domains=domains, noise_std=std, space="ensemble", steps=64, sigma_max=20.0,
                        enkf_n=2.0)
    inflations = []
    for l_j, idx in domain_inflations(x, y, std, domains, 2.0):
        inflations.append(l_j)
        exact = _letkf(x, y, std, domains, l_j, 20.0)[:, idx]
        torch.testing.assert_close(xa[:, idx], exact, rtol=0, atol=3e-3)
    assert max(inflations) - min(inflations) > 0.01  # the domains' inflations differ
    assert max(abs(v - 1) for v in inflations) > 0.02


def test_in_state_space_each_domain_is_the_analysis_at_its_own_inflation():
    """local_analysis(space="state", enkf_n=2): each domain's kept entries equal the state-space analysis run
    with that domain's inflation, the same dual-cost minimiser as in ensemble space (the same generator
    draws: the deterministic transport of the members, start="members"); the inflations differ."""
    x, y, std = _problem(1)
    domains = periodic_domains(D, OBS, radius=4, block=4, obs_radius=2.0)
    kw = dict(domains=domains, noise_std=std, steps=8, sigma_max=20.0, cg_iters=2)
    xa = local_analysis(x, y, enkf_n=2.0, **kw)
    inflations = []
    for l_j, idx in domain_inflations(x, y, std, domains, 2.0):
        inflations.append(l_j)
        fixed = local_analysis(x, y, inflation=l_j, **kw)[:, idx]
        # 2e-5: the library's Newton stops at DAPPER's xtol 1e-4 in l, the reference is Brent's to 1e-10; an
        # inflation left out (l = 1, |l_j - 1| > 0.02 here) moves the fields by ~1e-2
        torch.testing.assert_close(xa[:, idx], fixed, rtol=0, atol=2e-5)
    assert max(inflations) - min(inflations) > 0.01 and max(abs(v - 1) for v in inflations) > 0.02
    assert not torch.allclose(xa, local_analysis(x, y, **kw))


def test_bad_uses_are_refused():
    x, y, std = _problem()
    domains = periodic_domains(D, OBS, radius=4, block=2, obs_radius=2.0)
    with pytest.raises(ValueError, match="xN\\) must be > 0, got 0"):
        local_analysis(x, y, domains=domains, noise_std=std, enkf_n=0.0)
    with pytest.raises(ValueError, match="xN\\) must be > 0, got 0"):
        local_analysis(x, y, domains=domains, noise_std=std, space="ensemble", enkf_n=0.0)
    assert N == x.shape[0]


def test_the_command_line_takes_enkf_n_in_the_ensemble_space_domains_table(tmp_path, capsys):
    import xarray as xr

    from sciffusion.cli import main
    from test_cli_assimilate import tiny_config

    path = tiny_config(tmp_path, filter__localization_radius=None)
    text = path.read_text().replace("localization_radius = None\n", "") + "\n[domains]\nradius = 2\nobs_radius = 1.0\n"
    state, good = tmp_path / "state.toml", tmp_path / "good.toml"
    state.write_text(text + "enkf_n = 2.0\n")
    good.write_text(text + 'space = "ensemble"\nenkf_n = 2.0\n')
    for cfg, out in ((state, "s.zarr"), (good, "g.zarr")):  # either space
        assert main(["assimilate", str(cfg), "-o", str(tmp_path / out), "--no-progress"]) == 0
        ds = xr.open_zarr(tmp_path / out)
        assert float(ds.attrs["analysis_enkf_n"]) == 2.0 and np.isfinite(ds.x_analysis).all()


def test_the_command_line_takes_a_random_rotation_in_the_domains_table(tmp_path, capsys):
    """[domains] rotate = true reaches local_analysis (recorded, and the members differ from the unrotated run
    while their mean stays the same: the rotation is mean-preserving); a non-boolean is refused by name."""
    import xarray as xr

    from sciffusion.cli import main
    from test_cli_assimilate import tiny_config

    path = tiny_config(tmp_path, filter__localization_radius=None)
    text = path.read_text().replace("localization_radius = None\n", "") + '\n[domains]\nradius = 2\nobs_radius = 1.0\n' \
        + 'space = "ensemble"\n'
    plain, rotated, bad = tmp_path / "p.toml", tmp_path / "r.toml", tmp_path / "b.toml"
    plain.write_text(text)
    rotated.write_text(text + "rotate = true\n")
    bad.write_text(text + 'rotate = "yes"\n')
    assert main(["assimilate", str(bad), "-o", str(tmp_path / "b.zarr"), "--no-progress"]) == 2
    assert "config [domains] rotate must be true or false, got 'yes'" in capsys.readouterr().err
    for cfg, out in ((plain, "p.zarr"), (rotated, "r.zarr")):
        assert main(["assimilate", str(cfg), "-o", str(tmp_path / out), "--no-progress"]) == 0
    p, r = xr.open_zarr(tmp_path / "p.zarr"), xr.open_zarr(tmp_path / "r.zarr")
    assert str(r.attrs["analysis_rotate"]).lower() in ("true", "1") and "analysis_rotate" not in p.attrs
    first_p, first_r = p.x_analysis.isel(time=0), r.x_analysis.isel(time=0)
    assert not np.allclose(first_p.values, first_r.values)
    np.testing.assert_allclose(first_p.mean("member").values, first_r.mean("member").values, atol=1e-10)
