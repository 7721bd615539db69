"""Power spectra: Parseval, single-wave placement, the Nyquist bin, types."""

import numpy as np
import pytest
import xarray as xr

from sciffusion.metrics import radial_spectrum, zonal_spectrum


@pytest.mark.parametrize("n", [16, 15])
def test_zonal_parseval_and_nyquist(n):
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, n))
    p = zonal_spectrum(f)
    assert p.shape == (3, n // 2 + 1)
    np.testing.assert_allclose(p.sum(-1), (f**2).mean(-1), rtol=1e-12)


def test_zonal_nyquist_wave_counted_once():
    """cos(pi n) on an even grid has mean square 1 and lives entirely in the Nyquist bin."""
    n = 8
    f = np.cos(np.pi * np.arange(n))
    p = zonal_spectrum(f)
    np.testing.assert_allclose(p[-1], 1.0)
    np.testing.assert_allclose(p[:-1], 0.0, atol=1e-24)


def test_zonal_single_wave_and_density():
    lon = np.arange(36) * 10.0
    lat = np.array([0.0, 60.0])
    f = xr.DataArray(2.0 * np.cos(np.deg2rad(3 * lon))[None, :] * np.ones((2, 1)), dims=("lat", "lon"),
                     coords={"lat": lat, "lon": lon})
    p = zonal_spectrum(f)
    assert p.dims == ("lat", "wavenumber")
    np.testing.assert_allclose(p.sel(wavenumber=3), 2.0)  # amplitude^2 / 2
    d = zonal_spectrum(f, density=True, radius=1.0)
    np.testing.assert_allclose(d.sel(wavenumber=3), 2.0 * 2 * np.pi * np.cos(np.deg2rad(lat)))


@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (9, 9)])
def test_radial_parseval(shape):
    rng = np.random.default_rng(1)
    f = rng.standard_normal((2,) + shape)
    p = radial_spectrum(f)
    np.testing.assert_allclose(p.sum(-1), (f**2).mean((-2, -1)), rtol=1e-12)


def test_radial_single_wave_lands_in_its_bin_including_nyquist():
    n = 16
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    f = xr.DataArray(np.cos(2 * np.pi * 3 * x / n) + np.cos(np.pi * y), dims=("y", "x"))
    p = radial_spectrum(f)
    k = p.wavenumber.values * n
    np.testing.assert_allclose(p.values[k == 3], 0.5)
    np.testing.assert_allclose(p.values[k == 8], 1.0)  # Nyquist wave: mean square 1, once
    np.testing.assert_allclose(p.values[(k != 3) & (k != 8)], 0.0, atol=1e-20)


def test_radial_spectrum_dask_and_reduce():
    rng = np.random.default_rng(2)
    f = xr.DataArray(rng.standard_normal((4, 8, 8)), dims=("time", "y", "x"))
    eager = radial_spectrum(f, reduce_dims="all")
    lazy = radial_spectrum(f.chunk(time=1), reduce_dims="all")
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, eager.values)
    with pytest.raises(ValueError, match="spectrum dim 'lat'"):
        radial_spectrum(f, dims=("lat", "lon"))


def test_band_power_ratio_of_hand_built_modes():
    """Top-half band (k in [4, 8] on 16 points): only the k=6 mode counts; halving its amplitude
    quarters the power, and the k=2 mode (outside the band) is ignored."""
    import xarray as xr

    from sciffusion.metrics import band_power_ratio

    n = 16
    x = 2 * np.pi * np.arange(n) / n
    yy, xx = np.meshgrid(x, x, indexing="ij")
    truth = np.sin(2 * xx) + np.sin(6 * yy)
    forecast = 3 * np.sin(2 * xx) + 0.5 * np.sin(6 * yy)
    assert band_power_ratio(forecast, truth) == pytest.approx(0.25, rel=1e-12)
    assert band_power_ratio(2 * truth, truth) == pytest.approx(4.0, rel=1e-12)
    # a member dim only in the forecast: the mean power over members (1 + 3) / 2 = 2
    t = xr.DataArray(truth, dims=("y", "x"))
    ens = xr.concat([t, np.sqrt(3) * t], dim="member")
    assert band_power_ratio(ens, t) == pytest.approx(2.0, rel=1e-12)
    assert band_power_ratio(forecast, truth, band=(1, 3)) == pytest.approx(9.0, rel=1e-12)


def test_band_power_ratio_refuses_nan_and_empty_bands():
    from sciffusion.metrics import band_power_ratio

    truth = np.random.default_rng(0).normal(size=(8, 8))
    bad = truth.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="forecast has non-finite"):
        band_power_ratio(bad, truth)
    with pytest.raises(ValueError, match="holds no wavenumber"):
        band_power_ratio(truth, truth, band=(20, 30))
