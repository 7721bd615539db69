"""Rank histogram, spread-skill, RMSE/bias, Brier and reliability."""

import math

import numpy as np
import pytest
import xarray as xr

from sciffusion.metrics import (bias, brier_score, crps_ensemble, rank_histogram, reliability, rmse,
                                spread_skill_ratio)


def _da(x, dims):
    return xr.DataArray(x, dims=dims)


def test_rank_histogram_simple_ranks():
    fc = _da(np.array([[1.0, 2, 3], [4, 5, 6]]).T, ("member", "pt"))  # two points, 3 members each
    ob = _da(np.array([2.5, 10.0]), "pt")
    hist = rank_histogram(fc, ob, reduce_dims="all")
    np.testing.assert_array_equal(hist.values, [0, 0, 1, 1])
    assert list(hist["rank"].values) == [0, 1, 2, 3]  # (hist.rank is the DataArray method)


def test_rank_histogram_fractional_ties_matches_scores():
    from scores.probability import rank_histogram as scores_rh

    rng = np.random.default_rng(0)
    fc = _da(rng.integers(0, 4, (5, 40, 3)).astype(float), ("member", "t", "x"))
    ob = _da(rng.integers(0, 4, (40, 3)).astype(float), ("t", "x"))
    ours = rank_histogram(fc, ob, reduce_dims=["t"], ties="fractional", normalize=True)
    ref = scores_rh(fc, ob, "member", reduce_dims=["t"])
    np.testing.assert_allclose(ours.transpose("x", "rank").values, ref.transpose("x", "rank").values, atol=1e-12)


def test_rank_histogram_random_ties_are_uniform_and_seeded():
    """Observation equal to all members: the random split spreads it uniformly over all ranks."""
    fc = _da(np.zeros((4, 50000)), ("member", "pt"))
    ob = _da(np.zeros(50000), "pt")
    h = rank_histogram(fc, ob, reduce_dims="all", seed=1)
    assert h.sum() == 50000
    np.testing.assert_allclose(h.values / 50000, 0.2, atol=0.01)
    assert (rank_histogram(fc, ob, reduce_dims="all", seed=1) == h).all()
    frac = rank_histogram(fc, ob, reduce_dims="all", ties="fractional")
    np.testing.assert_allclose(frac.values, 10000.0)


def test_rank_histogram_counts_agree_with_xskillscore_without_ties():
    import xskillscore as xs

    rng = np.random.default_rng(1)
    fc = _da(rng.standard_normal((6, 30, 4)), ("member", "t", "x"))
    ob = _da(rng.standard_normal((30, 4)), ("t", "x"))
    ours = rank_histogram(fc, ob, reduce_dims=["t", "x"])
    ref = xs.rank_histogram(ob, fc, dim=["t", "x"])
    np.testing.assert_array_equal(ours.values, ref.values)


def test_rank_histogram_nan_weights_dask_and_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 8, 6))
    y = rng.standard_normal((8, 6))
    x[1, 0, 0] = np.nan
    y[3, 2] = np.nan
    fc, ob = _da(x, ("member", "t", "lat")), _da(y, ("t", "lat"))
    w = _da(np.linspace(0.5, 1.5, 6), "lat")
    eager = rank_histogram(fc, ob, reduce_dims=["t", "lat"], weights=w, ties="fractional")
    lazy = rank_histogram(fc.chunk(t=3), ob.chunk(t=3), reduce_dims=["t", "lat"], weights=w, ties="fractional")
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, eager.values)
    # two points dropped; total weight = sum of the weights of the valid points
    assert float(eager.sum()) == pytest.approx(8 * w.sum().item() - w[0].item() - w[2].item())
    per_t = rank_histogram(x, y, reduce_dims=[1])
    assert isinstance(per_t, np.ndarray) and per_t.shape == (8, 6)
    np.testing.assert_array_equal(per_t.sum(1), [5, 6, 6, 5, 6, 6, 6, 6])


def test_spread_skill_ratio_is_one_for_a_perfect_ensemble_with_correction():
    """Members and obs exchangeable draws: ratio ~ 1 with the sqrt((M+1)/M) correction,
    ~ sqrt(M/(M+1)) without."""
    rng = np.random.default_rng(3)
    m = 3
    mu = rng.standard_normal(40000)
    draws = mu + rng.standard_normal((m + 1, 40000))
    fc, ob = _da(draws[:m], ("member", "pt")), _da(draws[m], "pt")
    r = spread_skill_ratio(fc, ob, reduce_dims="all")
    r0 = spread_skill_ratio(fc, ob, reduce_dims="all", correction=False)
    assert float(r) == pytest.approx(1.0, abs=0.02)
    assert float(r0) == pytest.approx(math.sqrt(m / (m + 1)), abs=0.02)
    comp = spread_skill_ratio(fc, ob, reduce_dims="all", components=True)
    assert float(comp.skill) == pytest.approx(float(rmse(fc, ob, reduce_dims="all")))


@pytest.mark.parametrize("correction", [True, False])
def test_spread_skill_with_nan_matches_numpy_definition(correction):
    """Pointwise-blocked spread and skill equal the NaN-aware numpy definition: nanvar (ddof=1,
    times (M_p+1)/M_p), squared error of the nanmean, points with a NaN observation or < 2
    valid members left out of both averages; member-last and numpy inputs agree."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 30, 20)).astype(np.float32)
    y = rng.standard_normal((30, 20)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[:5, 0, 0] = np.nan  # one valid member: left out
    y[rng.random(y.shape) < 0.05] = np.nan
    x64, y64 = x.astype(float), y.astype(float)
    cnt = np.sum(~np.isnan(x64), axis=0)
    var = np.nanvar(np.where(cnt >= 2, x64, 0.0), axis=0, ddof=1)
    if correction:
        var = var * (cnt + 1) / cnt
    keep = (cnt >= 2) & ~np.isnan(y64)
    err2 = (np.nanmean(np.where(cnt >= 1, x64, 0.0), axis=0) - y64) ** 2
    w = np.cos(np.linspace(-1.2, 1.2, 20))
    wk = np.where(keep, w, 0.0)
    spread = np.sqrt((np.where(keep, var, 0) * wk).sum() / wk.sum())
    skill = np.sqrt((np.where(keep, err2, 0) * wk).sum() / wk.sum())
    fc, ob = _da(x, ("member", "t", "lat")), _da(y, ("t", "lat"))
    res = spread_skill_ratio(fc, ob, reduce_dims="all", weights=_da(w, "lat"), correction=correction,
                             components=True)
    np.testing.assert_allclose([float(res.spread), float(res.skill)], [spread, skill], rtol=1e-5)
    assert float(res.ratio) == pytest.approx(spread / skill, rel=1e-5)
    last = spread_skill_ratio(np.moveaxis(x, 0, -1).copy(), y, member_dim=-1, correction=correction)
    np.testing.assert_allclose(last, np.where(keep, np.sqrt(var / err2), np.nan), rtol=1e-4)


def test_rmse_bias_hand_values_and_weights():
    fc = _da(np.array([[1.0, 3.0], [2.0, 6.0]]), ("member", "lat"))  # means 1.5, 4.5
    ob = _da(np.array([1.0, 5.0]), "lat")
    w = _da(np.array([3.0, 1.0]), "lat")
    assert float(rmse(fc, ob, reduce_dims="lat")) == pytest.approx(0.5)
    assert float(bias(fc, ob, reduce_dims="lat")) == pytest.approx(0.0)
    assert float(bias(fc, ob, reduce_dims="lat", weights=w)) == pytest.approx((3 * 0.5 - 0.5) / 4)
    np.testing.assert_allclose(rmse(fc, ob).values, [0.5, 0.5])


def test_brier_hand_and_fair():
    fc = _da(np.array([[0.0, 1, 2, 3]]).T, ("member", "pt"))
    ob = _da(np.array([3.0]), "pt")
    p = 0.25  # one member (3) above 2.5; obs 3 above: o = 1
    assert float(brier_score(fc, ob, 2.5)[0]) == pytest.approx((p - 1) ** 2)
    assert float(brier_score(fc, ob, 2.5, fair=True)[0]) == pytest.approx((p - 1) ** 2 - p * (1 - p) / 3)


def test_brier_matches_scores_fair():
    from scores.probability import brier_score_for_ensemble

    rng = np.random.default_rng(4)
    fc = _da(rng.standard_normal((7, 50)), ("member", "pt"))
    ob = _da(rng.standard_normal(50), "pt")
    for fair in (False, True):
        ours = brier_score(fc, ob, 0.3, fair=fair, reduce_dims="all")
        ref = brier_score_for_ensemble(fc, ob, "member", 0.3, fair_correction=fair)
        assert float(ours) == pytest.approx(float(ref.squeeze()), rel=1e-12)


@pytest.mark.parametrize("fair", [False, True])
def test_brier_integrated_over_thresholds_is_crps(fair):
    """int BS(t) dt over all thresholds = CRPS (exact: BS is piecewise constant between the
    sorted members and observation, evaluated at interval midpoints)."""
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (6, 20)).astype(float)  # with ties
    y = rng.standard_normal(20)
    fc, ob = _da(x, ("member", "pt")), _da(y, "pt")
    crps = crps_ensemble(fc, ob, fair=fair).values
    for p in range(20):
        knots = np.unique(np.append(x[:, p], y[p]))
        mids, widths = 0.5 * (knots[1:] + knots[:-1]), np.diff(knots)
        bs = brier_score(fc.isel(pt=[p]), ob.isel(pt=[p]), mids, fair=fair).values[0]
        assert (bs * widths).sum() == pytest.approx(crps[p], rel=1e-12, abs=1e-12)


def test_reliability_bins_counts_and_frequencies():
    # 4 members: p in {0, .25, .5, .75, 1}
    x = np.array([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]).T
    y = np.array([1.0, 1.0, 0.0, 1.0])
    fc, ob = _da(x, ("member", "pt")), _da(y, "pt")
    rel = reliability(fc, ob, 0.5, bins=4, reduce_dims="all")
    np.testing.assert_allclose(rel["count"].values, [1, 0, 2, 1])
    np.testing.assert_allclose(rel.observed_frequency.values, [1.0, np.nan, 0.5, 1.0])
    np.testing.assert_allclose(rel.forecast_probability.values, [0.0, np.nan, 0.5, 1.0])
    out = reliability(x, y, 0.5, bins=4, reduce_dims="all")
    assert set(out) == {"forecast_probability", "observed_frequency", "count"}
    np.testing.assert_allclose(out["count"], [1, 0, 2, 1])


def test_reliability_of_a_calibrated_forecast_lies_on_the_diagonal():
    """k of M members exceed the threshold and the event happens with probability k/M."""
    rng = np.random.default_rng(6)
    m, n = 20, 20000
    k = rng.integers(0, m + 1, n)
    fc = _da(np.where(np.arange(m)[:, None] < k, 1.0, -1.0), ("member", "pt"))
    ob = _da(np.where(rng.random(n) < k / m, 1.0, -1.0), "pt")
    rel = reliability(fc, ob, 0.0, bins=5, reduce_dims="all")
    np.testing.assert_allclose(rel.observed_frequency, rel.forecast_probability, atol=0.03)
    assert float(rel["count"].sum()) == 20000
