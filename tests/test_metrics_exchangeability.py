"""Exchangeability of two ensembles: member rank histogram, spread ratio, energy distance + permutation test."""

import numpy as np
import pytest
import scipy.stats
import xarray as xr

import sciffusion.metrics as sm


def _ens(rng, n_points, members, scale=1.0, shift=0.0, event=0):
    shape = (n_points, members) + ((event,) if event else ())
    dims = ("point", "member") + (("k",) if event else ())
    return xr.DataArray(shift + scale * rng.standard_normal(shape), dims=dims)


def test_member_rank_histogram_is_flat_for_exchangeable_draws_and_u_shaped_for_narrow_emulation():
    """9 emulated vs 5 physics i.i.d. N(0, 1) members at 2000 points: the 10 ranks are uniform
    (chi-square p > 0.001, flatness < 0.03); emulated at half the spread piles physics members
    in the end ranks (each > 2x uniform)."""
    rng = np.random.default_rng(0)
    phys = _ens(rng, 2000, 5)
    hist = sm.member_rank_histogram(_ens(rng, 2000, 9), phys, reduce_dims="all")
    assert hist.sizes["rank"] == 10 and float(hist.sum()) == 2000 * 5
    assert scipy.stats.chisquare(hist.values).pvalue > 1e-3 and float(sm.flatness(hist)) < 0.03
    narrow = sm.member_rank_histogram(_ens(rng, 2000, 9, scale=0.5), phys, reduce_dims="all").values
    assert narrow[0] > 2 * 1000 and narrow[-1] > 2 * 1000


def test_flatness_is_the_ks_distance_from_uniform():
    hist = xr.DataArray([2.0, 0.0, 0.0, 2.0], dims="rank")  # F = .5 .5 .5 1 vs .25 .5 .75 1
    assert float(sm.flatness(hist)) == pytest.approx(0.25)


def test_spread_ratio_measures_the_spread_factor_by_lead():
    """Emulated members at 1.5x (lead 0) and 0.7x (lead 1) the physics spread: ratios 1.5 and 0.7."""
    rng = np.random.default_rng(1)
    phys = xr.DataArray(rng.standard_normal((3000, 2, 7)), dims=("init_time", "lead_time", "member"))
    emu = xr.DataArray(rng.standard_normal((3000, 2, 20)) * [[1.5], [0.7]], dims=("init_time", "lead_time", "member"))
    ratio = sm.spread_ratio(emu, phys, reduce_dims="init_time")
    np.testing.assert_allclose(ratio.values, [1.5, 0.7], rtol=0.03)
    ds = sm.spread_ratio(xr.Dataset({"x": emu}), xr.Dataset({"x": phys}), reduce_dims="all")
    assert float(ds["x"]) == pytest.approx(float(np.sqrt((emu.var("member", ddof=1)).mean() / phys.var("member", ddof=1).mean())))


def test_energy_distance_in_one_dimension_is_scipys_squared():
    """scipy's energy_distance is sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) (V-statistics): ours squared."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 11)), rng.normal(0.5, 2, size=(3, 6))
    ours = sm.energy_distance(xr.DataArray(x, dims=("p", "member")), xr.DataArray(y, dims=("p", "member")))
    want = [scipy.stats.energy_distance(a, b) ** 2 for a, b in zip(x, y)]
    np.testing.assert_allclose(ours.values, want, rtol=1e-10)


def test_energy_distance_over_event_dims_equals_the_energy_score_identity():
    """D = 2 mean_j [ES(X, y_j) - ES(Y, y_j)] with the (non-fair) energy score over event dims."""
    rng = np.random.default_rng(3)
    x, y = _ens(rng, 4, 7, event=5), _ens(rng, 4, 9, shift=0.3, event=5)
    ours = sm.energy_distance(x, y, event_dims="k")
    obs = y.rename(member="j")
    es = lambda ens: sm.energy_score(ens, obs, event_dims="k").mean("j")  # noqa: E731
    np.testing.assert_allclose(ours.values, (2 * (es(x) - es(y))).values, rtol=1e-10)


def test_permutation_p_values_are_uniform_under_h0_and_tiny_under_a_shift():
    """Same law: per-point p-values (99 permutations, 400 points) are uniform (KS p > 0.01);
    emulated shifted by 1 sd in each of 3 event dims: the pooled p-value is the minimum 1/100;
    the same seed gives the same p-values."""
    rng = np.random.default_rng(4)
    phys, emu = _ens(rng, 400, 10, event=3), _ens(rng, 400, 12, event=3)
    res = sm.energy_distance(emu, phys, event_dims="k", n_permutations=99, seed=5)
    assert scipy.stats.kstest(res.p_value.values, "uniform").pvalue > 0.01
    shifted = _ens(rng, 400, 12, shift=1.0, event=3)
    pooled = sm.energy_distance(shifted, phys, event_dims="k", reduce_dims="all", n_permutations=99, seed=5)
    assert float(pooled.p_value) == pytest.approx(0.01) and float(pooled.energy_distance) > 0.5
    assert res.p_value.dims == ("point",)
    xr.testing.assert_identical(res, sm.energy_distance(emu, phys, event_dims="k", n_permutations=99, seed=5))
