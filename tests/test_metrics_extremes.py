"""Threshold-weighted CRPS, quantile and interval scores: hand cases, exact identities, agreement
with scores and scoringrules, NaN rules and bad-input errors."""

import warnings

import numpy as np
import pytest
import scores.continuous as sc
import scores.probability as sp
import scoringrules as sr
import xarray as xr

from sciffusion.metrics import crps_ensemble
from sciffusion.metrics.quantile import interval_score, interval_score_ensemble, quantile_score
from sciffusion.metrics.twcrps import twcrps_ensemble

MEMBERS, OBS = np.array([0.0, 1.0, 2.0, 3.0]), np.array(2.5)


def _case(seed=0, m=6, nan=False):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((m, 8, 5)), rng.standard_normal((8, 5))
    if nan:
        x[rng.random(x.shape) < 0.15] = np.nan
        y[rng.random(y.shape) < 0.1] = np.nan
    return x, y


def _xr(x, y):
    coords = {"t": np.arange(8), "lat": np.linspace(-60, 60, 5)}
    fc = xr.DataArray(x, dims=("ens", "t", "lat"), coords=coords)
    return fc, xr.DataArray(y, dims=("t", "lat"), coords=coords)


# ---- threshold-weighted CRPS ------------------------------------------------------------------

@pytest.mark.parametrize("kw, standard, fair", [
    # v = max(x, 1.5) = [1.5, 1.5, 2, 3], v(y) = 2.5: 0.75 - 10/32 and 0.75 - 10/24
    ({"threshold": 1.5}, 0.4375, 1 / 3),
    # v = min(x, 1.5) = [0, 1, 1.5, 1.5], v(y) = 1.5: 0.5 - 10/32 and 0.5 - 10/24
    ({"threshold": 1.5, "tail": "lower"}, 0.1875, 1 / 12),
    # v = clip(x, 1, 2) = [1, 1, 2, 2], v(y) = 2: 0.5 - 8/32 and 0.5 - 8/24
    ({"lower": 1.0, "upper": 2.0}, 0.25, 1 / 6),
])
def test_twcrps_hand_computed(kw, standard, fair):
    assert twcrps_ensemble(MEMBERS, OBS, **kw) == pytest.approx(standard, abs=1e-14)
    assert twcrps_ensemble(MEMBERS, OBS, fair=True, **kw) == pytest.approx(fair, abs=1e-14)


@pytest.mark.parametrize("fair", [False, True])
def test_twcrps_unbounded_weight_is_plain_crps_exactly(fair):
    """w = 1 everywhere (threshold -inf, or the interval (-inf, inf)) is the CRPS, bit for bit."""
    x, y = _case(1, nan=True)
    crps = crps_ensemble(x, y, fair=fair)
    np.testing.assert_array_equal(twcrps_ensemble(x, y, -np.inf, fair=fair), crps)
    np.testing.assert_array_equal(twcrps_ensemble(x, y, np.inf, tail="lower", fair=fair), crps)
    np.testing.assert_array_equal(twcrps_ensemble(x, y, lower=-np.inf, upper=np.inf, fair=fair), crps)


@pytest.mark.parametrize("fair", [False, True])
def test_twcrps_tails_at_one_threshold_add_up_to_crps(fair):
    """1{z > t} + 1{z < t} = 1 almost everywhere, so the two tails split the CRPS integral;
    here with a per-point threshold array."""
    x, y = _case(2)
    t = np.random.default_rng(3).standard_normal(y.shape)
    both = twcrps_ensemble(x, y, t, fair=fair) + twcrps_ensemble(x, y, t, tail="lower", fair=fair)
    np.testing.assert_allclose(both, crps_ensemble(x, y, fair=fair), rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["ecdf", "fair"])
def test_twcrps_matches_scores_with_reduce_dims_and_weights(method):
    fc, obs = _xr(*_case(4))
    thr = xr.DataArray(np.linspace(-0.5, 0.5, 5), dims="lat", coords={"lat": obs.lat})
    w = np.cos(np.deg2rad(obs.lat))
    fair = method == "fair"
    kw = dict(member_dim="ens", fair=fair, reduce_dims=["lat"], weights=w)
    ref_kw = dict(method=method, reduce_dims=["lat"], weights=w)
    pairs = [
        (twcrps_ensemble(fc, obs, thr, **kw), sp.tail_tw_crps_for_ensemble(fc, obs, "ens", thr, **ref_kw)),
        (twcrps_ensemble(fc, obs, 0.3, tail="lower", **kw),
         sp.tail_tw_crps_for_ensemble(fc, obs, "ens", 0.3, tail="lower", **ref_kw)),
        (twcrps_ensemble(fc, obs, lower=-0.7, upper=thr, **kw),
         sp.interval_tw_crps_for_ensemble(fc, obs, "ens", -0.7, thr, **ref_kw)),
    ]
    for ours, ref in pairs:
        assert ours.dims == ("t",)
        np.testing.assert_allclose(ours.values, ref.transpose(*ours.dims).values, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("estimator, fair", [("qd", False), ("fair", True)])
def test_twcrps_matches_scoringrules_numpy(estimator, fair):
    x, y = _case(5, m=9)
    for a, b in [(0.2, np.inf), (-np.inf, -0.3), (-0.7, 0.9)]:
        ref = sr.twcrps_ensemble(y, x, a, b, m_axis=0, estimator=estimator, backend="numpy")
        ours = twcrps_ensemble(x, y, lower=None if a == -np.inf else a, upper=None if b == np.inf else b,
                               fair=fair)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)


def test_twcrps_nan_rules_like_crps_ensemble():
    """NaN members are dropped per point; a NaN observation or threshold gives NaN; skipna=False
    makes any NaN member give NaN."""
    x, y = _case(6, nan=True)
    t = np.full(y.shape, 0.1)
    t[0, 0] = np.nan
    ours = twcrps_ensemble(x, y, t)
    ours_fair = twcrps_ensemble(x, y, t, fair=True)
    for i, j in np.ndindex(y.shape):
        members = x[:, i, j][~np.isnan(x[:, i, j])]
        if np.isnan(y[i, j]) or np.isnan(t[i, j]):
            assert np.isnan(ours[i, j]) and np.isnan(ours_fair[i, j])
            continue
        ref = sr.twcrps_ensemble(y[i, j], members, t[i, j], estimator="qd", backend="numpy")
        ref_fair = sr.twcrps_ensemble(y[i, j], members, t[i, j], estimator="fair", backend="numpy")
        assert ours[i, j] == pytest.approx(ref, abs=1e-13)
        assert ours_fair[i, j] == pytest.approx(ref_fair, abs=1e-13)
    strict = twcrps_ensemble(x, y, 0.1, skipna=False)
    np.testing.assert_array_equal(np.isnan(strict), np.isnan(x).any(axis=0) | np.isnan(y))


def test_twcrps_types_dask_float32_torch():
    torch = pytest.importorskip("torch")
    fc, obs = _xr(*_case(7))
    fc32 = fc.astype("float32")
    eager = twcrps_ensemble(fc32, obs, 0.2, member_dim="ens")
    lazy = twcrps_ensemble(fc32.chunk({"t": 4}), obs.chunk({"t": 4}), 0.2, member_dim="ens")
    assert eager.dtype == np.float32 and lazy.chunks is not None
    np.testing.assert_array_equal(lazy.compute().values, eager.values)
    out = twcrps_ensemble(torch.from_numpy(fc.values), torch.from_numpy(obs.values), 0.2)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), eager.values, rtol=1e-5)


def test_twcrps_bad_input_errors():
    x, y = _case(8)
    with pytest.raises(ValueError, match="lower must not exceed upper"):
        twcrps_ensemble(x, y, lower=1.0, upper=0.0)
    with pytest.raises(ValueError, match="lower must not exceed upper .* 1 point"):
        twcrps_ensemble(x, y, lower=np.where(np.arange(5) == 2, 9.0, 0.0), upper=1.0)
    with pytest.raises(ValueError, match="not both"):
        twcrps_ensemble(x, y, 0.5, lower=0.0)
    with pytest.raises(ValueError, match="needs threshold"):
        twcrps_ensemble(x, y)
    with pytest.raises(ValueError, match="tail must be"):
        twcrps_ensemble(x, y, 0.5, tail="both")
    with pytest.raises(ValueError, match="threshold of shape"):
        twcrps_ensemble(x, y, np.zeros(3))
    fc, obs = _xr(x, y)
    bad = xr.DataArray(np.zeros(5), dims="lat", coords={"lat": np.arange(5.0)})
    with pytest.raises(ValueError, match="coordinate 'lat' differs"):
        twcrps_ensemble(fc, obs, bad, member_dim="ens")


# ---- quantile score ---------------------------------------------------------------------------

def test_quantile_score_hand_computed():
    # q = 2: y = 3 -> alpha * 1; y = 1 -> (1 - alpha) * 1
    q = xr.DataArray([[2.0, 2.0]], dims=("quantile", "x"), coords={"quantile": [0.9]})
    y = xr.DataArray([3.0, 1.0], dims="x")
    np.testing.assert_allclose(quantile_score(q, y, quantile_dim="quantile").values, [[0.9], [0.1]])
    # type-7 quantiles of [0..4] at 0.25 / 0.6 are 1 and 2.4; y = 3: 0.25 * 2 and 0.6 * 0.6
    assert quantile_score(np.arange(5.0), np.array(3.0), 0.25) == pytest.approx(0.5)
    np.testing.assert_allclose(quantile_score(np.arange(5.0), np.array(3.0), [0.25, 0.6]), [0.5, 0.36])


@pytest.mark.parametrize("method", ["linear", "nearest"])
def test_quantile_score_of_ensemble_matches_scores(method):
    fc, obs = _xr(*_case(9))
    w = np.cos(np.deg2rad(obs.lat))
    levels = [0.1, 0.5, 0.95]
    ours = quantile_score(fc, obs, levels, member_dim="ens", method=method, reduce_dims=["lat"],
                          weights=w)
    assert ours.dims == ("t", "quantile")
    q = np.quantile(fc.values, levels, axis=0, method=method)
    for i, a in enumerate(levels):
        qi = xr.DataArray(q[i], dims=obs.dims, coords=obs.coords)
        ref = sc.quantile_score(qi, obs, a, reduce_dims=["lat"], weights=w)
        np.testing.assert_allclose(ours.isel(quantile=i).values, ref.values, rtol=1e-12)


def test_quantile_score_of_quantile_forecasts_levels_from_coord_or_alpha():
    x, y = _case(10)
    levels = [0.2, 0.5, 0.8]
    qf = xr.DataArray(np.quantile(x, levels, axis=0), dims=("level", "t", "lat"), coords={"level": levels})
    obs = xr.DataArray(y, dims=("t", "lat"))
    from_coord = quantile_score(qf, obs, quantile_dim="level")
    from_alpha = quantile_score(qf.drop_vars("level"), obs, levels, quantile_dim="level")
    from_ensemble = quantile_score(x, y, levels)
    assert from_coord.dims == ("t", "lat", "level")
    np.testing.assert_array_equal(from_coord.values, from_alpha.values)
    np.testing.assert_allclose(from_coord.values, from_ensemble, rtol=1e-14)
    from_axis = quantile_score(qf.values, y, levels, quantile_dim=0)  # numpy: the quantile axis
    np.testing.assert_allclose(from_axis, from_ensemble, rtol=1e-14)


def test_quantile_score_nan_rules():
    """NaN members skipped (np.nanquantile), none valid or a NaN observation gives NaN,
    skipna=False: any NaN member gives NaN."""
    x, y = _case(11, nan=True)
    x[:, 1, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our all-NaN point is silent
        ours = quantile_score(x, y, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reference's all-NaN slice
        q = np.nanquantile(x, 0.3, axis=0)
    ref = np.maximum(0.7 * (q - y), -0.3 * (q - y))
    np.testing.assert_allclose(ours, ref, rtol=1e-14)
    assert np.isnan(ours[1, 1])
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(y) | np.isnan(x).all(axis=0))
    strict = quantile_score(x, y, 0.3, skipna=False)
    np.testing.assert_array_equal(np.isnan(strict), np.isnan(y) | np.isnan(x).any(axis=0))


def test_quantile_score_bad_input_errors():
    x, y = _case(12)
    for bad in (0.0, 1.0, -0.1, 1.5, [0.5, 1.2]):
        with pytest.raises(ValueError, match="alpha must lie strictly between 0 and 1"):
            quantile_score(x, y, bad)
    with pytest.raises(ValueError, match="alpha .* is required"):
        quantile_score(x, y)
    fc, obs = _xr(x, y)
    with pytest.raises(ValueError, match="no quantile dimension 'quantile'"):
        quantile_score(fc, obs, 0.5, quantile_dim="quantile")
    with pytest.raises(ValueError, match="has no coordinate 'ens'"):
        quantile_score(fc, obs, quantile_dim="ens")
    with pytest.raises(ValueError, match="alpha has 2 levels .* size 6"):
        quantile_score(fc, obs, [0.1, 0.9], quantile_dim="ens")


# ---- interval score ---------------------------------------------------------------------------

def test_interval_score_hand_computed_and_components():
    lo, hi, y = np.ones(3), np.full(3, 3.0), np.array([2.0, 0.0, 4.0])
    # width 2, plus 2/0.2 * 1 below (y = 0) or above (y = 4)
    np.testing.assert_allclose(interval_score(lo, hi, y, alpha=0.2), [2.0, 12.0, 12.0])
    parts = interval_score(lo, hi, y, alpha=0.2, components=True)
    np.testing.assert_allclose(parts["overprediction"], [0, 10, 0])
    np.testing.assert_allclose(parts["underprediction"], [0, 0, 10])
    np.testing.assert_allclose(parts["width"] + parts["overprediction"] + parts["underprediction"],
                               parts["interval_score"])


def test_interval_score_is_two_quantile_scores():
    """IS_alpha(l, u, y) = (2/alpha) (QS_{alpha/2}(l, y) + QS_{1-alpha/2}(u, y)) (Gneiting & Raftery
    2007, sect. 6.2), here on the ensemble's central interval."""
    x, y = _case(13, m=11)
    alpha = 0.2
    qs = quantile_score(x, y, [alpha / 2, 1 - alpha / 2])
    np.testing.assert_allclose(interval_score_ensemble(x, y, alpha=alpha), 2 / alpha * qs.sum(-1),
                               rtol=1e-13)


def test_interval_score_matches_scores_with_reduce_dims_and_weights():
    fc, obs = _xr(*_case(14, m=15))
    w = np.cos(np.deg2rad(obs.lat))
    lo, hi = (fc.quantile(q, "ens", method="linear").drop_vars("quantile") for q in (0.05, 0.95))
    ref = sc.interval_score(lo, hi, obs, 0.9, reduce_dims=["lat"], weights=w)
    ours = interval_score(lo, hi, obs, alpha=0.1, reduce_dims=["lat"], weights=w, components=True)
    ens = interval_score_ensemble(fc, obs, alpha=0.1, member_dim="ens", reduce_dims=["lat"], weights=w)
    for mine, theirs in [("interval_score", "total"), ("width", "interval_width_penalty"),
                         ("overprediction", "overprediction_penalty"),
                         ("underprediction", "underprediction_penalty")]:
        np.testing.assert_allclose(ours[mine].values, ref[theirs].values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ens.values, ref["total"].values, rtol=1e-12)


def test_interval_score_nan_and_lazy():
    x, y = _case(15, nan=True)
    lo, hi = np.nanquantile(x, 0.1, axis=0), np.nanquantile(x, 0.9, axis=0)
    ours = interval_score(lo, hi, y, alpha=0.2)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(y))
    np.testing.assert_allclose(interval_score_ensemble(x, y, alpha=0.2), ours, rtol=1e-14)
    fc, obs = _xr(x, y)
    lazy = interval_score_ensemble(fc.chunk({"t": 4}), obs.chunk({"t": 4}), alpha=0.2, member_dim="ens")
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, ours, rtol=1e-14)


def test_interval_score_bad_input_errors():
    lo, hi, y = np.zeros(4), np.ones(4), np.full(4, 0.5)
    for bad in (0.0, 1.0, 2.0, -0.5):
        with pytest.raises(ValueError, match="alpha must lie strictly between 0 and 1"):
            interval_score(lo, hi, y, alpha=bad)
    with pytest.raises(ValueError, match="single level"):
        interval_score(lo, hi, y, alpha=[0.1, 0.2])
    with pytest.raises(ValueError, match="lower must not exceed upper .* 2 point"):
        interval_score(np.array([0.0, 2.0, 2.0, 0.0]), hi, y, alpha=0.1)
    with pytest.raises(ValueError, match="one shape"):
        interval_score(lo, hi, np.zeros(3), alpha=0.1)
    with pytest.raises(ValueError, match="alpha must lie strictly"):
        interval_score_ensemble(np.zeros((3, 4)), y, alpha=1.0)
