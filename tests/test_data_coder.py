"""The shared field coder: one set of input checks and one JSON form for every emulator's coder."""

import json
import re

import numpy as np
import pytest
import xarray as xr

from sciffusion.data import FieldCoder, names
from sciffusion.emulators.downscale_data import DownscaleCoder
from sciffusion.emulators.rollout_data import RolloutCoder
from sciffusion.emulators.seeds_data import SeedsCoder

LAT, LON = np.linspace(-45.0, 45.0, 4), np.arange(6) * 60.0
GRID = {"lat": 4, "lon": 6}
UNITS = {"x": {"units": "K"}}


def seeds_coder():
    return SeedsCoder(variables=["x"], grid_dims=["lat", "lon"], grid_sizes=GRID,
                      grid_coords={"lat": LAT.tolist(), "lon": LON.tolist()}, n_seeds=2, lead_dim="lead_time",
                      lead_times=[1.0], center={"x": 280.0}, scale={"x": 5.0}, dev_scale={"x": [1.0]}, attrs=UNITS)


def rollout_coder():
    return RolloutCoder(["x"], ["lat", "lon"], [4, 6], mean={"x": 280.0}, std={"x": 5.0},
                        grid={"lat": LAT.tolist(), "lon": LON.tolist()}, attrs=UNITS)


def downscale_coder():
    """Fine grid 8x12, factor 2: its inputs live on the same 4x6 grid as the other coders'."""
    return DownscaleCoder(variables=["x"], factor=2, grid_dims=["lat", "lon"], sample_dim="time",
                          fine_sizes={"lat": 8, "lon": 12}, fine_coords={"lat": None, "lon": None},
                          coarse_coords={"lat": LAT.tolist(), "lon": LON.tolist()}, coord_attrs={},
                          periodic=["lon"], method="bicubic", center={"x": 280.0}, scale={"x": 5.0},
                          res_scale={"x": 1.0}, attrs=UNITS, fine_valid={"x": None}, coarse_valid={"x": None},
                          static={})


CODERS = {"seeds": seeds_coder, "rollout": rollout_coder, "downscale": downscale_coder}


def good() -> xr.Dataset:
    x = xr.DataArray(np.full((2, 4, 6), 280.0), dims=("member", "lat", "lon"), attrs=dict(UNITS["x"]))
    return xr.Dataset({"x": x}, coords={"lat": LAT, "lon": LON, "lead_time": 1.0})


def with_units(d: xr.Dataset, units: str | None) -> xr.Dataset:
    x = d.x.copy()
    x.attrs.pop("units")
    return d.assign(x=x.assign_attrs(units=units) if units else x)


BAD = {
    "missing variable": (lambda d: d.rename(x="y"), r"the input lacks variable\(s\) \['x'\] the model was trained on"),
    "missing grid dim": (lambda d: d.rename(lon="lng"), r"input variable 'x' has no grid dimension\(s\) \['lon'\]"),
    "wrong size": (lambda d: d.isel(lon=slice(0, 5)), "input grid dimension 'lon' has size 5, the model was trained on 6"),
    "other coordinate": (lambda d: d.assign_coords(lat=LAT + 1.0), "input coordinate 'lat' differs from the training grid"),
    "no units": (lambda d: with_units(d, None), "variable 'x' has no 'units' attribute"),
    "other units": (lambda d: with_units(d, "degC"), "variable 'x' is in units 'degC' but the model was trained on 'K'"),
}


def _message(coder: FieldCoder, ds: xr.Dataset) -> str:
    with pytest.raises(ValueError) as err:
        coder.check(ds, role="input")
    return str(err.value)


def test_a_valid_input_passes_every_coder_check():
    for make in CODERS.values():
        make().check(good())


@pytest.mark.parametrize("case", list(BAD))
def test_every_emulator_coder_raises_the_same_error_naming_the_difference(case):
    change, pattern = BAD[case]
    bad = change(good())
    messages = {name: _message(make(), bad) for name, make in CODERS.items()}
    for name, msg in messages.items():
        assert re.search(pattern, msg), (name, msg)
    if case == "wrong size":  # the downscaler also says which coarse grid its factor implies
        assert "does not match factor 2 of the fine grid 8x12" in messages["downscale"]
        messages["downscale"] = messages["downscale"].split(": the coarse grid")[0]
    assert len(set(messages.values())) == 1, messages


def test_each_coder_names_its_input_by_default():
    bad = good().rename(x="y")
    roles = {}
    for name, make in CODERS.items():
        with pytest.raises(ValueError) as err:
            make().check(bad)
        roles[name] = str(err.value)
    assert roles["seeds"].startswith("the seeds lack variable(s)")
    assert roles["rollout"].startswith("the initial state lacks variable(s)")
    assert roles["downscale"].startswith("the coarse input lacks variable(s)")


@pytest.mark.parametrize("name", list(CODERS))
def test_to_dict_survives_a_json_round_trip_unchanged(name):
    coder = CODERS[name]()
    d = json.loads(json.dumps(coder.to_dict()))
    assert d == coder.to_dict()
    again = type(coder).from_dict(d)
    assert again.to_dict() == coder.to_dict()
    assert again.channels == 1 and again.grid_shape == coder.grid_shape


def test_the_shared_normalisation_is_affine_per_channel_and_inverts():
    import torch

    coder = RolloutCoder(["a", "b"], ["s"], [3], mean={"a": 1.0, "b": -2.0}, std={"a": 2.0, "b": 0.5})
    x = torch.tensor([[[3.0, 1.0, 5.0], [-2.0, -1.5, -3.0]]])
    z = coder.normalize(x)
    assert torch.equal(z, torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, -2.0]]]))
    assert torch.equal(coder.denormalize(z), x)


def test_names_turns_none_a_name_or_a_sequence_into_a_list_of_str():
    assert names(None) == [] and names("x") == ["x"] and names(("a", 1)) == ["a", "1"]


def test_coders_of_the_kept_checkpoints_still_load():
    """Configs written before the shared coder (no ``attrs`` in the seeds coder) load and check."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    seeds = json.loads((root / "sciffusion/assets/seeds_lorenz96/config.json").read_text())
    coder = SeedsCoder.from_dict(seeds["ensemble_emulator"]["coder"])
    assert coder.attrs == {} and coder.grid_shape == (40,)
    ds = xr.Dataset({"x": (("lead_time", "member", "k"), np.zeros((1, 2, 40)))},
                    coords={"lead_time": [0.5], "k": np.arange(40)})
    coder.check(ds)
    with pytest.raises(ValueError, match="seeds grid dimension 'k' has size 39, the model was trained on 40"):
        coder.check(ds.isel(k=slice(0, 39)))
    roll = json.loads((root / "benchmarks/models/rollout_kolmogorov_ar_pattern_gpu/config.json").read_text())
    coder = RolloutCoder.from_dict(roll["rollout"]["coder"])
    assert coder.grid_shape == (32, 32) and coder.to_dict() == roll["rollout"]["coder"]
