"""Shallow water on the sphere: conservation, the balanced Galewsky jet, the optional dependency."""

import builtins
from importlib.util import find_spec

import pytest
import torch

from sciffusion.systems import ShallowWater

needs_th = pytest.mark.skipif(find_spec("torch_harmonics") is None,
                              reason="shallow water needs torch-harmonics (pip install --no-deps torch-harmonics==0.9.3)")


@pytest.fixture(scope="module")
def sw():
    return ShallowWater(nlat=24, nlon=48, dt_seconds=1200.0)


@needs_th
def test_galewsky_jet_at_45_north_on_a_lat_lon_grid(sw):
    f = sw.fields(sw.initial_state(1, torch.Generator().manual_seed(0)))
    assert 30.0 < float(f["u"].max()) < 80.0  # the 80 m/s jet, smoothed by the T8 truncation
    lat = sw.coords()["lat"].values
    assert lat.max() == pytest.approx(90.0) and lat.min() == pytest.approx(-90.0)
    jet_lat = lat[int(f["u"][0].mean(-1).argmax())]
    assert 35 < jet_lat < 55  # the jet sits at 45 N
    assert 9500 < float(f["h"].mean()) < 10500


@needs_th
def test_mass_is_conserved_to_round_off_and_energy_nearly_over_half_a_day(sw):
    x = sw.initial_state(2, torch.Generator().manual_seed(1))
    x = sw.perturb(x, torch.Generator().manual_seed(2), 5.0)
    before = sw.invariants(x)
    after = sw.invariants(sw.step(x, 36))
    assert torch.all(((after["mass"] - before["mass"]) / before["mass"]).abs() < 1e-12)
    drift = ((after["energy"] - before["energy"]) / before["energy"]).abs()
    assert torch.all(drift < 1e-3) and torch.all(drift > 0)  # hyperdiffusion removes a little


@needs_th
def test_unperturbed_zonal_jet_stays_balanced(sw):
    """Without bump and hyperdiffusion the (re-balanced) jet is a steady state of the dynamics."""
    quiet = ShallowWater(nlat=24, nlon=48, dt_seconds=3600.0, bump_amplitude=0.0, hyperdiffusion_hours=None)
    x = quiet.initial_state(1, torch.Generator().manual_seed(0))
    dh = quiet.fields(quiet.step(x, 12))["h"] - quiet.fields(x)["h"]
    assert float(dh.abs().max()) < 1e-6  # metres, after 12 hours
    bumped = ShallowWater(nlat=24, nlon=48, dt_seconds=3600.0, hyperdiffusion_hours=None)
    x = bumped.initial_state(1, torch.Generator().manual_seed(0))
    assert float((bumped.fields(bumped.step(x, 12))["h"] - bumped.fields(x)["h"]).abs().max()) > 1.0


def test_missing_torch_harmonics_gives_an_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torch_harmonics"):
            raise ImportError("No module named 'torch_harmonics'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="--no-deps torch-harmonics==0.9.3"):
        ShallowWater(nlat=8, nlon=16)


@needs_th
def test_shallow_water_ensemble_has_lat_lon_fields_with_si_units():
    from sciffusion.systems import simulate

    ds = simulate(ShallowWater(nlat=12, nlon=24, dt_seconds=3600.0), n_members=2, n_leads=1, lead_interval=2.0)
    assert ds.h.dims == ("init_time", "lead_time", "member", "lat", "lon")
    assert ds.h.attrs["units"] == "m" and ds.u.attrs["units"] == "m s-1" and ds.lat.attrs["units"] == "degrees_north"
    assert ds.lead_time.attrs["units"] == "hours"
    spread = float((ds.h.isel(lead_time=0) - ds.h_truth.isel(lead_time=0)).std())
    assert 0.5 < spread < 1.5  # default perturbation: 1 m rms of height
