"""EnsembleEmulator on a global latitude-longitude ensemble (issue 22): descending latitudes, 0-360
longitudes, members along ``member``, a few leads; a cos-latitude-weighted loss and weighted scores."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.emulators import EnsembleEmulator, calibrate_spread, ensemble_skill

LAT = np.linspace(78.75, -78.75, 8)  # cell centres, north to south (as in most analyses)
LON = np.arange(16) * 22.5  # 0 .. 337.5
LEADS = [6.0, 12.0, 24.0]
# reflect at the poles, wrap around in longitude; [8, 8] channels (with [8, 16] the safetensors header
# is 7296 = 0x1c80 bytes, whose first byte 0x80 checkpoint.check_safetensors takes for a pickle)
UNET = {"kwargs": {"channels": [8, 8], "groups": 4, "padding": ["reflect", "circular"]}}
FIT = dict(weights="cos", net=UNET, steps=3, batch_size=16, lr=2e-3, warmup_steps=1, progress=False)


def cos_weights() -> np.ndarray:
    """Independent of the library: cos(latitude) over the 8 rows, mean 1."""
    w = np.cos(np.deg2rad(LAT))
    return w / w.mean()


def global_ensemble(n_init=4, members=5, seed=0) -> xr.Dataset:
    """``t2m (init_time, lead_time, member, lat, lon)`` whose member spread grows towards the poles
    (so weighted and unweighted scores differ), with the truth ``t2m_truth``."""
    rng = np.random.default_rng(seed)
    amp = (1.0 + 2.0 * np.abs(np.sin(np.deg2rad(LAT))))[:, None]  # (lat, 1)
    signal = 280 + 10 * np.cos(np.deg2rad(LAT))[:, None] + rng.normal(size=(n_init, len(LEADS), 1, 8, 16))
    lead_amp = np.sqrt(np.array(LEADS) / 6.0)[None, :, None, None, None]
    x = signal + lead_amp * amp * rng.normal(size=(n_init, len(LEADS), members, 8, 16))
    truth = signal[:, :, 0] + lead_amp[:, :, 0] * amp * rng.normal(size=(n_init, len(LEADS), 8, 16))
    dims = ("init_time", "lead_time", "member", "lat", "lon")
    attrs = {"units": "K", "long_name": "2 m temperature"}
    return xr.Dataset({"t2m": (dims, x.astype(np.float32), attrs),
                       "t2m_truth": (dims[:2] + dims[3:], truth.astype(np.float32), attrs)},
                      coords={"init_time": np.arange(n_init), "lead_time": LEADS, "member": np.arange(members),
                              "lat": ("lat", LAT, {"units": "degrees_north"}),
                              "lon": ("lon", LON, {"units": "degrees_east"})})


def test_the_training_loss_is_the_cos_latitude_weighted_mean_of_the_squared_denoising_error(monkeypatch):
    """fit(weights="cos") hands edm_loss a per-point weight equal to cos(lat) / mean (the same at every
    longitude, channel and pair), and for a fixed batch and noise the loss is the hand-computed
    lambda(sigma) * sum_i w_i err_i^2 / sum_i w_i, which differs from the unweighted mean."""
    import sciffusion.training as training

    seen = []
    real = training.edm_loss

    def recording(model, x0, **kw):
        seen.append((x0.detach().clone(), kw["mask"]))
        return real(model, x0, **kw)

    monkeypatch.setattr(training, "edm_loss", recording)
    EnsembleEmulator.fit(global_ensemble()[["t2m"]], **{**FIT, "steps": 2})
    assert len(seen) == 2
    x0, mask = seen[0]
    assert mask is not None and mask.shape == (x0.shape[0], 1, 8, 16)
    np.testing.assert_allclose(mask.numpy(), np.broadcast_to(cos_weights()[:, None], (x0.shape[0], 1, 8, 16)), rtol=1e-6)

    g = torch.Generator().manual_seed(1)
    sigma, eps = torch.exp(torch.randn(x0.shape[0], generator=g)), torch.randn(x0.shape, generator=g)

    def denoiser(x, s, cond=None):  # any fixed map; the loss only weighs its error
        return 0.3 * x + 0.1 * x**2

    loss = float(real(denoiser, x0, mask=mask, noise=(sigma, eps), sigma_data=1.0))
    xn = (x0 + sigma[:, None, None, None] * eps).double().numpy()
    err = (0.3 * xn + 0.1 * xn**2 - x0.double().numpy()) ** 2  # (B, 1, lat, lon)
    lam = ((sigma**2 + 1) / sigma**2).double().numpy()
    w = cos_weights()[None, None, :, None]
    weighted = float(np.mean(lam * (err * w).sum((1, 2, 3)) / (w.sum() * 16)))
    unweighted = float(np.mean(lam * err.mean((1, 2, 3))))
    assert loss == pytest.approx(weighted, rel=1e-5)
    assert abs(weighted - unweighted) > 1e-3 * unweighted  # weights ignored would fail the line above


def test_a_global_grid_fits_generates_members_round_trips_and_scores_latitude_weighted(tmp_path):
    """On (lat descending, lon 0-360): members along ``member`` keep the grid's coordinates, save/load
    keeps the weights and the generated members bit for bit, and ensemble_skill(weights=...) gives the
    cos-weighted CRPS and spread-skill of a hand computation (not the unweighted ones)."""
    ds = global_ensemble()
    emu = EnsembleEmulator.fit(ds[["t2m"]], **FIT)
    np.testing.assert_allclose(emu.weights.values, cos_weights(), rtol=1e-12)
    assert emu.weights.dims == ("lat",) and np.array_equal(emu.weights["lat"].values, LAT)

    test = global_ensemble(n_init=2, seed=1)
    seeds = test[["t2m"]].isel(member=[0, 1])
    ens = emu.generate(seeds, 4, steps=3, progress=False)
    assert ens["t2m"].dims == ("init_time", "lead_time", "member", "lat", "lon")
    assert dict(ens.sizes) == {"init_time": 2, "lead_time": 3, "member": 4, "lat": 8, "lon": 16}
    assert np.array_equal(ens["lat"].values, LAT) and np.array_equal(ens["lon"].values, LON)
    assert np.isfinite(ens["t2m"].values).all() and ens["t2m"].attrs["units"] == "K"

    emu.save(tmp_path / "ckpt")
    config = json.loads(next((tmp_path / "ckpt").glob("*.json")).read_text())
    assert "weights" in json.dumps(config)
    again = EnsembleEmulator.load(tmp_path / "ckpt")
    xr.testing.assert_identical(again.weights, emu.weights)
    np.testing.assert_array_equal(again.generate(seeds, 4, steps=3, progress=False)["t2m"].values, ens["t2m"].values)

    truth = test["t2m_truth"]
    skill = ensemble_skill(ens["t2m"], truth, weights=emu.weights)
    fc, y = ens["t2m"].values.astype(np.float64), truth.values.astype(np.float64)  # (I, L, M, lat, lon), (I, L, lat, lon)
    m = fc.shape[2]
    crps = np.abs(fc - y[:, :, None]).mean(2) - 0.5 * np.abs(fc[:, :, :, None] - fc[:, :, None, :]).mean((2, 3))
    w = np.broadcast_to(cos_weights()[:, None], crps.shape)
    assert skill["crps"] == pytest.approx((crps * w).sum() / w.sum(), rel=1e-10)
    for k, t in enumerate(LEADS):
        assert skill["per_lead"][f"{t:g}"]["crps"] == pytest.approx((crps[:, k] * w[:, k]).sum() / w[:, k].sum(), rel=1e-10)
    var, err2 = (m + 1) / m * fc.var(2, ddof=1), (fc.mean(2) - y) ** 2
    assert skill["ssr"] == pytest.approx(np.sqrt((var * w).sum() / (err2 * w).sum()), rel=1e-10)
    plain = ensemble_skill(ens["t2m"], truth)
    assert plain["crps"] == pytest.approx(crps.mean(), rel=1e-10)
    assert abs(skill["crps"] - plain["crps"]) > 1e-3 * plain["crps"]
    assert ensemble_skill(ens["t2m"], truth, weights="cos")["crps"] == pytest.approx(skill["crps"], rel=1e-12)


@pytest.mark.filterwarnings("ignore:calibrate_spread")  # 2 training steps: no temperature reaches ratio 1
def test_spread_calibration_can_score_with_the_emulators_latitude_weights():
    """calibrate_spread(weights="emulator") reports, at each temperature, the cos-weighted spread-skill
    ratio of the members that temperature generates (computed here by hand)."""
    ds, test = global_ensemble(), global_ensemble(n_init=2, seed=1)
    emu = EnsembleEmulator.fit(ds[["t2m"]], **{**FIT, "steps": 2})
    seeds, obs = test[["t2m"]].isel(member=[0, 1]), test[["t2m_truth"]].rename(t2m_truth="t2m")
    cal = calibrate_spread(emu, seeds, obs, values=(1.0, 2.0), n_members=4, refine=False, apply=False,
                           steps=2, weights="emulator")
    fc = emu.generate(seeds, 4, steps=2, temperature=2.0, progress=False)["t2m"].values.astype(np.float64)
    y = obs["t2m"].values.astype(np.float64)
    w = np.broadcast_to(cos_weights()[:, None], y.shape)
    var, err2 = 5 / 4 * fc.var(2, ddof=1), (fc.mean(2) - y) ** 2
    assert cal.tried[2.0] == pytest.approx(np.sqrt((var * w).sum() / (err2 * w).sum()), rel=1e-9)
    plain = np.sqrt(var.mean() / err2.mean())
    assert abs(cal.tried[2.0] - plain) > 1e-4 * plain


def test_unweighted_emulators_store_no_weights():
    """The default (weights=None) writes the coder exactly as before: no ``weights`` key, no loss mask."""
    emu = EnsembleEmulator.fit(global_ensemble()[["t2m"]], **{**FIT, "weights": None, "steps": 1})
    assert emu.weights is None and "weights" not in emu.coder.to_dict()


@pytest.mark.parametrize("change, message", [
    ("nan", r"variable 't2m' has 1 NaN or infinite value\(s\) of 7680 in the training data.*fill"),
    ("nan_truth", r"variable 't2m' has 1 NaN or infinite value\(s\) of 1536 in the truth"),
    ("weight_dims", r"weights have dim\(s\) \['level'\] that are not grid dims .*\['lat', 'lon'\]"),
    ("weight_coord", r"weights' 'lat' coordinate differs"),
    ("no_lat", r"latitude coordinate named one of \('lat', 'latitude'\) among the grid dims \['y', 'lon'\]"),
    ("negative", "non-negative"),
    ("eof", "EOFMLP backbone's loss is on EOF coefficients"),
])
def test_clear_errors_for_nan_fields_and_weights_off_the_grid(change, message):
    ds, kw = global_ensemble(), {**FIT, "steps": 1}
    if change == "nan":
        ds["t2m"][1, 2, 3, 4, 5] = np.nan
    elif change == "nan_truth":
        ds["t2m_truth"][0, 0, 0, 0] = np.inf
        kw.update(mode="post-processing")
    elif change == "weight_dims":
        kw["weights"] = xr.DataArray(np.ones((8, 2)), dims=("lat", "level"), coords={"lat": LAT})
    elif change == "weight_coord":
        kw["weights"] = xr.DataArray(np.ones(8), dims="lat", coords={"lat": LAT + 1})
    elif change == "no_lat":
        ds = ds.rename(lat="y")
    elif change == "negative":
        kw["weights"] = xr.DataArray(-np.ones(16), dims="lon", coords={"lon": LON})
    elif change == "eof":
        kw["net"] = {"name": "EOFMLP", "kwargs": {"rank": 4, "cond_rank": 4, "width": 16, "depth": 1}}
    data = ds if change == "nan_truth" else ds[["t2m"]]
    with pytest.raises(ValueError, match=message):
        EnsembleEmulator.fit(data, **kw)


def test_weights_given_south_to_north_are_reordered_to_the_datas_descending_latitudes():
    """A DataArray of weights on ascending latitudes lines up with the data by coordinate, not position."""
    from sciffusion.emulators.weights import resolve

    ds = global_ensemble(n_init=1)
    w = xr.DataArray(np.arange(1.0, 9.0), dims="lat", coords={"lat": LAT[::-1]})
    got = resolve(w, ds, ["lat", "lon"])
    np.testing.assert_allclose(got.values, np.arange(8.0, 0.0, -1.0) / 4.5)
    assert np.array_equal(got["lat"].values, LAT)
