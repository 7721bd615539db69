"""benchmarks/assimilate_kolmogorov.py: the pieces of the Kolmogorov assimilation benchmark, on 3 cycles."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dapper")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import assimilate_kolmogorov as ak  # noqa: E402


def test_observations_are_the_truth_at_every_fourth_point_plus_the_stated_noise(monkeypatch):
    monkeypatch.setattr(ak, "SPINUP", 50)
    data = ak.make_problem(40, seed=5)
    assert len(ak.OBS_INDEX) == 256 and data["obs"].shape == (40, 256)
    truth = data["truth"][1:, ::4, ::4].reshape(40, 256)  # rows and columns 0, 4, ..., 60
    resid = data["obs"] - truth
    assert abs(resid.std() / ak.OBS_STD - 1) < 0.05  # 10,240 draws: 5% is ~7 standard errors of the std
    assert abs(resid.mean()) < 0.02


def test_both_filters_score_the_same_cycles_against_the_same_truth(monkeypatch):
    """Each runner scores cycles 0, 1, 2 against truth[1..3] (a shifted truth would give RMSEs of the
    size of the flow's change over 8 steps, ~0.35, not of the analysis error)."""
    monkeypatch.setattr(ak, "SPINUP", 50)
    data = ak.make_problem(3, seed=5)
    ours = ak.run_ours(data, {"block": 8, "radius": 2, "steps": 4, "cg_iters": 1, "inflation": 1.0}, burn=0)
    peer = ak.run_letkf(data, {"infl": 1.0, "loc_rad": 2}, burn=0)
    for r in (ours, peer):
        assert "error" not in r
        assert [row["t"] for row in r["rows"]] == [0, 1, 2]
        assert all(row["finite"] for row in r["rows"])
        assert r["rmse"] < 0.3  # started at truth + unit-RMS fields: mean error ~ 1/sqrt(24) = 0.2


def test_rmse_difference_recovers_a_known_offset_and_covers_it():
    rng = np.random.default_rng(0)
    a = [{"t": t, "rmse": 1.0 + 0.1 * rng.normal()} for t in range(400)]
    b = [{"t": t, "rmse": r["rmse"] + 0.05 + 0.01 * rng.normal()} for t, r in enumerate(a)]
    d = ak.rmse_difference(a, b, burn=100)
    assert d["cycles"] == 300
    assert d["mean"] == pytest.approx(-0.05, abs=0.003)  # 300 draws of std 0.01: 5 standard errors
    assert d["ci95"][0] <= -0.05 <= d["ci95"][1]
