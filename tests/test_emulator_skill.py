"""The SEEDS skill table: reliable ensembles score as reliable, under-dispersive ones do not."""

import numpy as np
import xarray as xr

from sciffusion.emulators import ensemble_skill, format_table

DIMS = ("init_time", "lead_time", "member", "k")


def ensembles(spread=1.0, members=20, n=400, seed=0):
    """Signal + N(0, 1) truth; members = signal + spread * N(0, 1) (exchangeable with the truth when spread = 1)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, 2, 1, 10))
    truth = signal[:, :, 0] + rng.normal(size=(n, 2, 10))
    ens = signal + spread * rng.normal(size=(n, 2, members, 10))
    coords = {"init_time": np.arange(n), "lead_time": [0.5, 1.0], "k": np.arange(10)}
    return (xr.DataArray(ens, dims=DIMS, coords=coords),
            xr.DataArray(truth, dims=DIMS[:2] + DIMS[3:], coords=coords))


def test_a_reliable_ensemble_has_unit_spread_skill_flat_ranks_and_right_tail_probabilities():
    ens, truth = ensembles()
    s = ensemble_skill(ens, truth, clim_mean=0.0, clim_std=float(np.sqrt(2)))
    assert abs(s["ssr"] - 1) < 0.04 and s["rank_flatness"] < 0.02
    assert abs(s["tail_freq_2sigma"] - 0.0455) < 0.01 and s["tail_err_2sigma"] < 0.008 and s["tail_err_3sigma"] < 0.002
    assert s["crps"] > s["crps_fair"]  # the finite-ensemble CRPS is the larger one
    assert set(s["per_lead"]) == {"0.5", "1"} and abs(s["per_lead"]["1"]["ssr"] - 1) < 0.06


def test_an_under_dispersive_ensemble_has_low_spread_skill_a_u_shaped_histogram_and_too_few_tails():
    ens, truth = ensembles(spread=0.3)
    s = ensemble_skill(ens, truth, clim_mean=0.0, clim_std=float(np.sqrt(2)))
    good = ensemble_skill(*ensembles(), clim_mean=0.0, clim_std=float(np.sqrt(2)))
    assert abs(s["ssr"] - 0.3 * np.sqrt(21 / 20) / np.sqrt(1 + 1 / 20)) < 0.05
    assert s["rank_flatness"] > 0.2 and s["crps"] > good["crps"]
    hist = np.array(s["rank_histogram"])
    assert hist[0] > 3 * hist[10] and hist[-1] > 3 * hist[10]
    assert s["tail_prob_2sigma"] < s["tail_freq_2sigma"] - 0.01
    table = format_table({"good": good, "narrow": s})
    assert "narrow" in table and "crps" in table.splitlines()[0]
