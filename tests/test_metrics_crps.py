"""CRPS: hand cases, agreement with properscoring / scores / scoringrules, NaN rules, properties."""

import math

import numpy as np
import properscoring as ps
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from sciffusion.metrics import crps_ensemble, crps_gaussian, energy_score

FAST = settings(max_examples=40, deadline=None, derandomize=True)


def brute_force(x, y, fair=False):
    """Kernel form with an explicit M x M sum, NaN members dropped (float64)."""
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    m = x.size
    if np.isnan(y) or m == 0 or (fair and m < 2):
        return np.nan
    k = m * (m - 1) if fair else m * m
    return np.abs(x - y).mean() - np.abs(x[:, None] - x[None, :]).sum() / (2 * k)


@pytest.mark.parametrize(
    "obs, members, expected",
    [(0.0, [0.0, 1.0], 0.25), (1.0, [0.0, 0.0, 1.0], 4 / 9), (0.0, [-1.0, 0.0, 0.0, 1.0], 1 / 8),
     (2.5, [1.0, 2.0, 3.0, 4.0], 1.0 - 20 / 32)],
)
def test_hand_computed_standard(obs, members, expected):
    assert crps_ensemble(np.array(members), np.array(obs)) == pytest.approx(expected, abs=1e-12)


def test_hand_computed_fair_and_nan_table():
    """The anchors' NaN table: members [1,2,3,4] / [1,NaN,3,4] / all NaN / one valid, obs 2.5."""
    x = np.array([[1.0, 2, 3, 4], [1, np.nan, 3, 4], [np.nan] * 4, [np.nan, np.nan, 2, np.nan]]).T
    y = np.array([2.5, 2.5, 2.5, 2.5])
    std = crps_ensemble(x, y)
    fair = crps_ensemble(x, y, fair=True)
    np.testing.assert_allclose(std, [0.375, 0.5, np.nan, 0.5])
    # fair, [1,2,3,4]: 1 - 20 / (2*12) = 1/6; [1,3,4]: 7/6 - 12 / (2*6) = 1/6
    np.testing.assert_allclose(fair, [1 / 6, 1 / 6, np.nan, np.nan])
    prop = crps_ensemble(x, y, skipna=False)
    np.testing.assert_allclose(prop, [0.375, np.nan, np.nan, np.nan])
    assert np.isnan(crps_ensemble(x, np.full(4, np.nan))).all()


def _random_case(rng, m, n=300, ties=True, nan_members=0.1, nan_obs=0.05):
    if ties:  # few distinct values: many ties among members and with the observation
        x = rng.integers(-2, 3, (m, n)).astype(float)
        y = rng.integers(-2, 3, n).astype(float)
    else:
        x, y = rng.standard_normal((m, n)), rng.standard_normal(n)
    x[rng.random(x.shape) < nan_members] = np.nan
    y[rng.random(n) < nan_obs] = np.nan
    return x, y


@pytest.mark.parametrize("m", [1, 2, 3, 50])
@pytest.mark.parametrize("ties", [True, False])
def test_standard_matches_properscoring(m, ties):
    x, y = _random_case(np.random.default_rng(m), m, ties=ties)
    ours = crps_ensemble(x, y)
    ref = ps.crps_ensemble(y, x.T)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3, 50])
@pytest.mark.parametrize("fair", [False, True])
def test_matches_scores_with_nan(m, fair):
    from scores.probability import crps_for_ensemble

    x, y = _random_case(np.random.default_rng(10 + m), m)
    fc = xr.DataArray(x, dims=("ens", "pt"))
    ob = xr.DataArray(y, dims="pt")
    ours = crps_ensemble(fc, ob, member_dim="ens", fair=fair)
    ref = crps_for_ensemble(fc, ob, "ens", method="fair" if fair else "ecdf", preserve_dims="all")
    ref = ref.where(ob.notnull() & (fc.count("ens") > int(fair)))  # scores: 0/0 cases vary
    np.testing.assert_allclose(ours.values, ref.values, rtol=1e-12, atol=1e-12)
    brute = [brute_force(x[:, i], y[i], fair) for i in range(y.size)]
    np.testing.assert_allclose(ours.values, brute, rtol=1e-12, atol=1e-12)


def test_weighted_mean_matches_scores():
    from scores.probability import crps_for_ensemble

    rng = np.random.default_rng(3)
    fc = xr.DataArray(rng.standard_normal((7, 4, 5)), dims=("member", "lat", "lon"),
                      coords={"lat": [-60.0, -20, 20, 60]})
    ob = xr.DataArray(rng.standard_normal((4, 5)), dims=("lat", "lon"), coords={"lat": fc.lat})
    w = np.cos(np.deg2rad(fc.lat))
    ours = crps_ensemble(fc, ob, fair=True, reduce_dims=["lat", "lon"], weights=w)
    ref = crps_for_ensemble(fc, ob, "member", method="fair", weights=w)
    assert float(ours) == pytest.approx(float(ref), rel=1e-12)


def test_matches_scoringrules_pwm_float32():
    import scoringrules as sr

    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 500)).astype(np.float32) + 280.0  # offset field, float32
    y = (rng.standard_normal(500) + 280.0).astype(np.float32)
    ours = crps_ensemble(x, y, fair=True)
    assert ours.dtype == np.float32
    ref = sr.crps_ensemble(y.astype(float), x.T.astype(float), estimator="pwm", backend="numpy")
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_float32_is_accurate_for_offset_fields():
    """Members near 280 K with spread 1 K: float32 result within 1e-5 of float64 on the same inputs."""
    rng = np.random.default_rng(5)
    x = (280 + rng.standard_normal((200, 1000))).astype(np.float32)
    y = (280 + rng.standard_normal(1000)).astype(np.float32)
    ref = crps_ensemble(x.astype(np.float64), y.astype(np.float64))
    ours = crps_ensemble(x, y)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert crps_ensemble(x.astype(np.float32), y, dtype=np.float64).dtype == np.float64


def test_member_axis_and_layouts_agree():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 6, 7))
    y = rng.standard_normal((6, 7))
    a = crps_ensemble(x, y)
    b = crps_ensemble(np.moveaxis(x, 0, -1), y, member_dim=-1)
    c = crps_ensemble(np.moveaxis(x, 0, 1).copy(), y, member_dim=1)
    d = crps_ensemble(xr.DataArray(x[:, ::2, ::-1], dims=("member", "a", "b")),
                      xr.DataArray(y[::2, ::-1], dims=("a", "b")))  # non-contiguous view
    np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(a, c, rtol=1e-13)
    np.testing.assert_allclose(a[::2, ::-1], d.values, rtol=1e-13)


@pytest.mark.parametrize("m", [2, 3, 7, 16, 24, 25, 32])
def test_sorting_network_and_sort_paths_agree(m, monkeypatch):
    """The sorting network (member-first, and member-last through its transpose) and the np.sort
    path give the same values (with ties) for every M, and the brute-force value per point."""
    from sciffusion.metrics import crps as crps_mod
    from sciffusion.metrics.crps import sorting_network

    net = sorting_network(m)
    assert all(i < j < m for i, j in net)
    rng = np.random.default_rng(m)
    x = rng.integers(0, 5, (m, 4000)).astype(float) + rng.standard_normal((m, 4000)) * (rng.random(4000) < 0.5)
    y = rng.integers(0, 5, 4000).astype(float)
    for fair in (False, True):
        net_first = crps_ensemble(x, y, fair=fair)
        net_last = crps_ensemble(np.ascontiguousarray(x.T), y, member_dim=-1, fair=fair)
        with monkeypatch.context() as mp:
            mp.setattr(crps_mod, "_NETWORK_MAX_M", 0)
            mp.setattr(crps_mod, "_NETWORK_MAX_M_LAST", 0)
            sort_path = crps_ensemble(x, y, fair=fair)
        np.testing.assert_allclose(net_first, sort_path, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(net_last, sort_path, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(net_first[:50], [brute_force(x[:, i], y[i], fair) for i in range(50)],
                                   rtol=1e-12, atol=1e-12)


def _masked_case(m, layout, seed):
    """float32 ensemble with 5% NaN observations, a 30% land mask (NaN in the observation and
    every member) and 1% NaN members, in the member-first or member-last layout."""
    rng = np.random.default_rng(seed)
    n = 3000
    x = rng.standard_normal((m, n)).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    y[rng.random(n) < 0.05] = np.nan
    land = rng.random(n) < 0.3
    x[:, land], y[land] = np.nan, np.nan
    x[rng.random(x.shape) < 0.01] = np.nan
    if layout == "last":
        return np.ascontiguousarray(x.T), y, x, -1
    return x, y, x, 0


@pytest.mark.parametrize("m", [5, 10, 24, 32, 50])
@pytest.mark.parametrize("layout", ["first", "last"])
def test_nan_observations_land_and_nan_members_are_exact(m, layout):
    """NaN observations (and land) give NaN and leave the other points on the fast path; points
    with a NaN member are scored with that member dropped: standard equals properscoring, fair
    equals the brute-force kernel form with the per-point member count."""
    arr, y, x, axis = _masked_case(m, layout, seed=m)
    std = crps_ensemble(arr, y, member_dim=axis)
    fair = crps_ensemble(arr, y, member_dim=axis, fair=True)
    x64, y64 = x.astype(float), y.astype(float)
    ref = ps.crps_ensemble(y64, x64.T)
    np.testing.assert_array_equal(np.isnan(std), np.isnan(y))
    np.testing.assert_allclose(std, ref, rtol=1e-5, atol=1e-5)
    brute = [brute_force(x64[:, i], y64[i], True) for i in range(y.size)]
    np.testing.assert_allclose(fair, brute, rtol=1e-5, atol=1e-5)
    prop = crps_ensemble(arr, y, member_dim=axis, skipna=False)  # propagate: NaN member -> NaN
    np.testing.assert_array_equal(np.isnan(prop), np.isnan(y) | np.isnan(x).any(axis=0))


@pytest.mark.parametrize("m", [6, 40])
def test_a_nan_changes_only_its_own_point(m):
    """A NaN member or observation at one point leaves every other point's score bit-for-bit
    as it was (no whole block falls back to another path)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((m, 5000)).astype(np.float32)
    y = rng.standard_normal(5000).astype(np.float32)
    clean = crps_ensemble(x, y)
    xn, yn = x.copy(), y.copy()
    xn[1, 10], yn[20] = np.nan, np.nan
    dirty = crps_ensemble(xn, yn)
    keep = np.ones(5000, bool)
    keep[[10, 20]] = False
    np.testing.assert_array_equal(dirty[keep], clean[keep])
    assert np.isnan(dirty[20])
    assert dirty[10] == pytest.approx(brute_force(np.delete(x[:, 10], 1), y[10]), rel=1e-5)


@pytest.mark.parametrize("m", [8, 200])
def test_no_member_by_member_temporary(m):
    """Peak extra memory stays well below one copy of the ensemble (blocked kernel), where an
    M x M kernel would need M times the input."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n = 3_200_000 // m
    x = rng.standard_normal((m, n)).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    crps_ensemble(x[:, :10], y[:10], fair=True)  # warm-up: lazy imports are not the kernel's
    tracemalloc.start()
    crps_ensemble(x, y, fair=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.5 * x.nbytes + 4 * y.nbytes


def test_observation_broadcasts_over_forecast_only_dims():
    rng = np.random.default_rng(7)
    fc = xr.DataArray(rng.standard_normal((5, 3, 4)), dims=("member", "lead", "x"))
    ob = xr.DataArray(rng.standard_normal(4), dims="x")
    res = crps_ensemble(fc, ob)
    assert res.dims == ("lead", "x")
    np.testing.assert_allclose(res.isel(lead=1), crps_ensemble(fc.isel(lead=1), ob))


members = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=12)


@FAST
@given(members, st.floats(-1e3, 1e3), st.booleans())
def test_crps_nonnegative_and_matches_kernel_form(x, y, fair):
    """Standard CRPS >= 0 always (the fair one can be negative); both equal the kernel form."""
    x = np.array(x)
    val = float(crps_ensemble(x, np.array(y), fair=fair))
    ref = brute_force(x, y, fair)
    if np.isnan(ref):
        assert np.isnan(val)
    else:
        assert val == pytest.approx(ref, rel=1e-9, abs=1e-9 * (1 + np.abs(x).max() + abs(y)))
    if not fair:
        assert val >= -1e-9 * (1 + np.abs(x).max())


@FAST
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_one_member_is_absolute_error(x, y):
    assert float(crps_ensemble(np.array([x]), np.array(y))) == pytest.approx(abs(x - y), rel=1e-12)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.floats(-2.5, 2.5), st.integers(2, 8))
def test_fair_is_unbiased_for_gaussian_and_standard_overshoots(y, m):
    """Mean over many N(0,1) ensembles: the fair CRPS matches crps_gaussian within 4 standard
    errors; the standard one exceeds it by E|X-X'|/(2M) = 1/(sqrt(pi) M)."""
    rng = np.random.default_rng(int(1000 * (y + 3)) * 10 + m)
    reps = 20000
    x = rng.standard_normal((m, reps))
    obs = np.full(reps, y)
    exact = float(crps_gaussian(0.0, 1.0, np.array(y)))
    fair = crps_ensemble(x, obs, fair=True)
    std = crps_ensemble(x, obs)
    se = fair.std() / math.sqrt(reps)
    assert abs(fair.mean() - exact) < 4 * se
    excess = std - fair  # the same ensembles: the excess has small variance
    assert abs(std.mean() - exact - 1 / (math.sqrt(math.pi) * m)) < 4 * se + 4 * excess.std() / math.sqrt(reps)


def test_crps_gaussian_matches_properscoring_and_types():
    rng = np.random.default_rng(8)
    mu, sig, y = rng.standard_normal(50), rng.random(50) + 0.1, rng.standard_normal(50)
    np.testing.assert_allclose(crps_gaussian(mu, sig, y), ps.crps_gaussian(y, mu, sig), rtol=1e-12)
    da = crps_gaussian(xr.DataArray(mu, dims="x"), xr.DataArray(sig, dims="x"), xr.DataArray(y, dims="x"),
                       reduce_dims="all")
    assert float(da) == pytest.approx(ps.crps_gaussian(y, mu, sig).mean(), rel=1e-12)


@FAST
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=8), st.floats(-100, 100), st.booleans())
def test_energy_score_in_one_dimension_is_crps(x, y, fair):
    fc = xr.DataArray(np.array(x)[:, None], dims=("member", "v"))
    ob = xr.DataArray(np.array([y]), dims="v")
    es = energy_score(fc, ob, event_dims=["v"], fair=fair)
    es0 = energy_score(fc.isel(v=0), ob.isel(v=0), fair=fair)
    cr = crps_ensemble(fc.isel(v=0), ob.isel(v=0), fair=fair)
    np.testing.assert_allclose([float(es), float(es0)], float(cr), rtol=1e-9, atol=1e-9)


def test_energy_score_multivariate_brute_force():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 3, 4))  # member, point, event
    y = rng.standard_normal((3, 4))
    x[2, 1, 0] = np.nan  # member 2 dropped at point 1
    fc = xr.DataArray(x, dims=("member", "pt", "e"))
    ob = xr.DataArray(y, dims=("pt", "e"))
    for fair in (False, True):
        res = energy_score(fc, ob, event_dims="e", fair=fair).values
        for p in range(3):
            xs = x[:, p][~np.isnan(x[:, p]).any(1)]
            m = len(xs)
            k = m * (m - 1) if fair else m * m
            ref = np.linalg.norm(xs - y[p], axis=1).mean() - np.linalg.norm(
                xs[:, None] - xs[None], axis=2).sum() / (2 * k)
            assert res[p] == pytest.approx(ref, rel=1e-12)


def _energy_direct(x, y, fair):
    """Energy score of x[M, D] against y[D] from the pairwise definition (float64, no Gram)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    x = x[~np.isnan(x).any(axis=1)]
    m = len(x)
    k = m * (m - 1) if fair else m * m
    return np.linalg.norm(x - y, axis=1).mean() - np.linalg.norm(x[:, None] - x[None], axis=2).sum() / (2 * k)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_energy_score_gram_form_equals_pairwise_form(offset):
    """The Gram-matrix energy score equals the direct pairwise sum to float64 rounding, also for
    fields far from zero (offset 1e6 with unit spread), duplicate and near-duplicate members, an
    observation equal to a member, and a NaN member (dropped); skipna=False gives NaN there."""
    rng = np.random.default_rng(12)
    x = offset + rng.standard_normal((7, 9, 40))  # point, member, event
    y = offset + rng.standard_normal((7, 40))
    x[1, 3] = x[1, 2]  # duplicate member
    x[2, 4] = x[2, 0] + 1e-9  # near-duplicate member
    x[3, :] = x[3, 0]  # every member the same
    y[4] = x[4, 5]  # observation on a member
    x[5, 6, 7] = np.nan  # member 6 dropped at point 5
    fc = xr.DataArray(x, dims=("pt", "member", "e"))
    ob = xr.DataArray(y, dims=("pt", "e"))
    for fair in (False, True):
        res = energy_score(fc, ob, event_dims="e", fair=fair).values
        ref = [_energy_direct(x[p], y[p], fair) for p in range(7)]
        np.testing.assert_allclose(res, ref, rtol=1e-10, atol=1e-12 + 1e-15 * offset)
    assert np.isnan(energy_score(fc, ob, event_dims="e", skipna=False).values[5])
    # member-first float32 input, two event dims: same as float64 member-last up to float32 input rounding
    x32 = np.moveaxis(x[:5], 1, 0).reshape(9, 5, 5, 8).astype(np.float32)
    fc32 = xr.DataArray(x32, dims=("member", "pt", "a", "b"))
    ob32 = xr.DataArray(y[:5].reshape(5, 5, 8).astype(np.float32), dims=("pt", "a", "b"))
    res32 = energy_score(fc32, ob32, event_dims=["a", "b"])
    assert res32.dtype == np.float32
    ref32 = [_energy_direct(x32[:, p].reshape(9, 40), ob32.values[p].reshape(40), False) for p in range(5)]
    np.testing.assert_allclose(res32.values, ref32, rtol=1e-5, atol=1e-6 * (1 + offset))


def test_energy_score_matches_scoringrules_and_stays_below_twice_the_input():
    """Against scoringrules' es_ensemble (numpy backend), with peak memory of the whole call at
    most twice the float32 input (M = 50, D = 1000)."""
    import tracemalloc

    import scoringrules as sr

    rng = np.random.default_rng(13)
    x = rng.standard_normal((12, 50, 1000)).astype(np.float32)
    y = rng.standard_normal((12, 1000)).astype(np.float32)
    fc = xr.DataArray(x, dims=("case", "member", "e"))
    ob = xr.DataArray(y, dims=("case", "e"))
    ref = sr.es_ensemble(y.astype(float), x.astype(float), m_axis=-2, v_axis=-1, backend="numpy")
    energy_score(fc[:1], ob[:1], event_dims="e")  # warm-up: lazy imports are not the score's
    tracemalloc.start()
    res = energy_score(fc, ob, event_dims="e")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(res.values, ref, rtol=1e-5)
    assert peak < 2 * x.nbytes
