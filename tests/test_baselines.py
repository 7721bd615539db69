"""Statistical baselines of ensemble emulation: raw seeds, Gaussian around the seed mean, EMOS."""

import numpy as np
import pytest
import xarray as xr

import sciffusion.metrics as sm
from sciffusion.emulators import EMOS, GaussianAroundSeeds, raw_seeds

TRUE = {"a": [0.5, -1.0], "b": [0.8, 1.2], "c": [0.3, 1.0], "d": [1.5, 0.5]}  # per lead


def _synthetic(n=4000, seed=0):
    """Two seeds m +- s/sqrt(2) (so mean m, ddof-1 variance s^2) and truth ~ N(a + b m, c + d s^2) per lead."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0, 2, (n, 2))
    s = rng.uniform(0.3, 2.0, (n, 2))
    seeds = np.stack([m - s / np.sqrt(2), m + s / np.sqrt(2)], axis=2)
    p = {k: np.array(v) for k, v in TRUE.items()}
    y = p["a"] + p["b"] * m + np.sqrt(p["c"] + p["d"] * s**2) * rng.standard_normal((n, 2))
    coords = {"init_time": np.arange(n), "lead_time": [1.0, 2.0]}
    return (xr.DataArray(seeds, dims=("init_time", "lead_time", "member"), coords=coords, name="x"),
            xr.DataArray(y, dims=("init_time", "lead_time"), coords=coords, name="x"))


def test_emos_recovers_known_ngr_coefficients_per_lead():
    """Minimum-CRPS NGR on 4000 synthetic cases recovers a, b within 0.06 and c, d within 15%,
    separately for each lead (different truths per lead)."""
    seeds, truth = _synthetic()
    params = EMOS().fit(seeds, truth).params["x"]
    for k, want in TRUE.items():
        got = params[k].values
        if k in "ab":
            np.testing.assert_allclose(got, want, atol=0.06)
        else:
            np.testing.assert_allclose(got, want, rtol=0.15)


def test_emos_beats_gaussian_around_seeds_when_spread_carries_information_and_scores_exactly():
    """On held-out cases EMOS (which uses the seed variance and corrects the bias) has a lower
    CRPS than the Gaussian around the seed mean; crps() equals crps_gaussian of predict()."""
    (seeds, truth), (test_s, test_y) = _synthetic(seed=1), _synthetic(1000, seed=2)
    emos, gauss = EMOS().fit(seeds, truth), GaussianAroundSeeds().fit(seeds, truth)
    assert float(emos.crps(test_s, test_y)) < 0.9 * float(gauss.crps(test_s, test_y))
    mu, sigma = emos.predict(test_s)
    assert float(emos.crps(test_s, test_y)) == pytest.approx(float(sm.crps_gaussian(mu, sigma, test_y, reduce_dims="all")))


def test_gaussian_around_seeds_spread_is_the_training_rmse_and_crps_optimal():
    """sigma per lead = RMSE of the seed mean on the training data; for Gaussian errors that sigma
    minimises the CRPS (0.8 sigma and 1.25 sigma score worse on held-out data)."""
    rng = np.random.default_rng(3)
    m = rng.normal(size=(5000, 3))
    seeds = xr.DataArray(m[..., None] + rng.normal(0, 0.1, (5000, 3, 2)), dims=("init_time", "lead_time", "member"),
                         coords={"lead_time": [0.1, 0.2, 0.3]})
    truth = xr.DataArray(m + rng.normal(0, 1, (5000, 3)) * [0.5, 1, 2], dims=("init_time", "lead_time"),
                         coords={"lead_time": [0.1, 0.2, 0.3]})
    g = GaussianAroundSeeds().fit(seeds[:4000], truth[:4000])
    rmse = np.sqrt(((seeds[:4000].mean("member") - truth[:4000]) ** 2).mean("init_time"))
    np.testing.assert_allclose(g.params["x"]["sigma"], rmse)
    mu, sigma = g.predict(seeds[4000:])
    best = float(sm.crps_gaussian(mu, sigma, truth[4000:], reduce_dims="all"))
    for f in (0.8, 1.25):
        assert best < float(sm.crps_gaussian(mu, f * sigma, truth[4000:], reduce_dims="all"))


def test_generated_members_are_seeded_per_member_and_follow_the_predicted_law():
    """generate(): member m is the same draw whatever n_members; members have the seed layout,
    mean mu and std sigma (2000 members, 3-sigma tolerances)."""
    seeds, truth = _synthetic(200)
    emos = EMOS().fit(seeds, truth)
    small, big = emos.generate(seeds[:5], 3, seed=7), emos.generate(seeds[:5], 2000, seed=7)
    assert big.dims == seeds.dims and big.sizes["member"] == 2000
    xr.testing.assert_equal(small, big.isel(member=slice(0, 3)))
    mu, sigma = emos.predict(seeds[:5])
    z = (big.mean("member") - mu) / (sigma / np.sqrt(2000))
    assert float(abs(z).max()) < 4
    np.testing.assert_allclose(big.std("member"), sigma.transpose(*big.std("member").dims), rtol=0.08)


def test_raw_seeds_are_the_first_members_and_datasets_work():
    ens = xr.Dataset({"x": (("init_time", "member", "k"), np.arange(24.0).reshape(2, 3, 4))})
    xr.testing.assert_equal(raw_seeds(ens, 2), ens.isel(member=[0, 1]))
    g = GaussianAroundSeeds(keep=()).fit(raw_seeds(ens, 2), ens.x.isel(member=2))
    assert set(g.generate(raw_seeds(ens, 2), 4).data_vars) == {"x"}
