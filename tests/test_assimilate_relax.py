"""Spread relaxation (RTPS / RTPP, ``sciffusion.assimilate.relax``): the hand formulas entry by
entry, the mean kept, the end points (0: identity, 1: the forecast's spread or anomalies), and the
``rtps``/``rtpp`` options of ``cycle``, ``assimilate`` and the command line."""

import numpy as np
import pytest
import torch

from sciffusion.assimilate import analysis, cycle, relax
from sciffusion.inverse import Mask


def ensembles(seed=0, n=6, d=5):
    g = torch.Generator().manual_seed(seed)
    xf = 2.0 + 3.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    xa = 1.0 + torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 1.0, d, dtype=torch.float64)
    return xf, xa


def test_rtps_sets_each_entrys_spread_to_the_weighted_mean_of_the_two_spreads_and_keeps_the_mean():
    xf, xa = ensembles()
    for a in (0.0, 0.3, 1.0):
        out = relax(xf, xa, rtps=a)
        want = (1 - a) * xa.std(0) + a * xf.std(0)
        np.testing.assert_allclose(out.std(0), want, rtol=1e-12)
        np.testing.assert_allclose(out.mean(0), xa.mean(0), atol=1e-12)
        # each entry's anomalies are scaled, not replaced: their correlation with the analysis' is 1
        anom_out, anom_a = out - out.mean(0), xa - xa.mean(0)
        np.testing.assert_allclose(anom_out, anom_a * (want / xa.std(0)), atol=1e-12)
    assert torch.equal(relax(xf, xa), xa)


def test_rtps_by_hand_on_two_members():
    """Two members: spread |x1 - x2| / sqrt(2); analysis spread 1/sqrt(2), forecast's 3/sqrt(2), a = 0.5
    -> 2/sqrt(2): the analysis anomalies +-0.5 become +-1 about the analysis mean 4."""
    xf = torch.tensor([[0.0], [3.0]], dtype=torch.float64)
    xa = torch.tensor([[3.5], [4.5]], dtype=torch.float64)
    np.testing.assert_allclose(relax(xf, xa, rtps=0.5), [[3.0], [5.0]], atol=1e-12)


def test_rtpp_mixes_the_anomalies_member_by_member():
    xf, xa = ensembles(1)
    out = relax(xf, xa, rtpp=0.25)
    want = xa.mean(0) + 0.75 * (xa - xa.mean(0)) + 0.25 * (xf - xf.mean(0))
    np.testing.assert_allclose(out, want, atol=1e-12)
    np.testing.assert_allclose(relax(xf, xa, rtpp=1.0) - xa.mean(0), xf - xf.mean(0), atol=1e-12)


def test_an_entry_the_analysis_collapsed_keeps_its_value_and_one_that_did_not_change_keeps_its_spread():
    xf, xa = ensembles(2)
    xa[:, 0] = 7.0  # zero analysis spread: nothing to scale
    xa[:, 1] = xf[:, 1]  # untouched by the observations: RTPS does nothing there
    out = relax(xf, xa, rtps=0.7)
    assert torch.all(out[:, 0] == 7.0)
    np.testing.assert_allclose(out[:, 1], xf[:, 1], atol=1e-12)


@pytest.mark.parametrize("kwargs, needle", [({"rtps": 1.5}, "rtps must be in [0, 1], got 1.5"),
                                            ({"rtpp": -0.1}, "rtpp must be in [0, 1], got -0.1")])
def test_bad_coefficients_are_refused_naming_them(kwargs, needle):
    xf, xa = ensembles()
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        relax(xf, xa, **kwargs)
    with pytest.raises(ValueError, match="differ in shape"):
        relax(xf, xa[:, :3], rtps=0.5)


def test_cycle_applies_it_after_every_analysis_and_refuses_a_bad_value_before_the_first():
    """cycle(rtps=...) is, cycle by cycle, relax() of the same analysis draws (same generator)."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    op = Mask(torch.tensor([1.0, 0, 1, 0, 1, 0], dtype=torch.float64))
    obs = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def forecast(x):
        return 0.9 * torch.roll(x, 1, -1)

    opts = {"steps": 4, "cg_iters": 2}
    run = cycle(forecast, x0, op, obs, noise_std=0.5, generator=torch.Generator().manual_seed(9), rtps=0.6, **opts)
    x, gen = x0, torch.Generator().manual_seed(9)
    for t in range(3):
        xf = forecast(x)
        x = relax(xf, analysis(xf, op, obs[t], noise_std=0.5, generator=gen, **opts), rtps=0.6)
        np.testing.assert_allclose(run.analysis[t], x, atol=1e-12)
    calls = []
    with pytest.raises(ValueError, match="rtpp must be in"):
        cycle(lambda x: calls.append(1) or x, x0, op, obs, noise_std=0.5, rtpp=2.0)
    assert not calls


def test_the_command_line_takes_rtps_and_records_it(tmp_path):
    import xarray as xr

    from sciffusion.cli import main
    from test_cli_assimilate import tiny_config

    out = tmp_path / "r.zarr"
    assert main(["assimilate", str(tiny_config(tmp_path, filter__rtps=0.5)), "-o", str(out), "--no-progress"]) == 0
    ds = xr.open_zarr(out)
    assert float(ds.attrs["analysis_rtps"]) == 0.5 and np.isfinite(ds.x_analysis).all()
    assert main(["assimilate", str(tiny_config(tmp_path)), "-o", str(out), "--resume", "--no-progress"]) == 2
