"""Power spectra of 2-D fields: radial (isotropic) for periodic grids, zonal for lat-lon grids.

Both use the forward-normalised FFT, F_k = (1/N) sum_n f_n exp(-2 pi i k n / N), so that the
spectrum sums to the mean square of the field (Parseval): sum_k P(k) = mean(f^2).

Nyquist: for an even number of points, the wavenumber N/2 has a single Fourier coefficient (it
is its own conjugate). The radial spectrum works from the full complex FFT, where every
coefficient is counted exactly once. The zonal spectrum works from the real FFT and doubles the
one-sided wavenumbers 1..ceil(N/2)-1 for their negative twins, but not the Nyquist one; doubling
it too (as WeatherBench 2's ZonalEnergySpectrum does, by our reading) over-counts its power.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ._core import as_dataarray, reduce


def _radial_bins(ny, nx, dy, dx):
    ly, lx = ny * dy, nx * dx
    lref = max(lx, ly)
    ky = np.fft.fftfreq(ny) * ny * (lref / ly)
    kx = np.fft.fftfreq(nx) * nx * (lref / lx)
    index = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int64).ravel()
    return index, lref


def _radial_kernel(f, index, nbins):
    flat = f.reshape(f.shape[:-2] + (-1,))
    power = np.abs(np.fft.fft2(f, norm="forward").reshape(flat.shape)) ** 2
    order = np.argsort(index, kind="stable")
    starts = np.searchsorted(index[order], np.arange(nbins))
    out = np.add.reduceat(power[..., order], starts, axis=-1)
    out[..., np.bincount(index, minlength=nbins) == 0] = 0.0
    return out


def radial_spectrum(field, *, dims=("y", "x"), spacing=(1.0, 1.0), reduce_dims=None, weights=None):
    """Isotropic power spectrum of a doubly periodic 2-D field over ``dims`` (numpy/torch: the
    last two axes).

        P(k) = sum over (ky, kx) with round(|k| L) = k L of |F(ky, kx)|^2

    with wavenumbers in cycles per unit length (grid ``spacing`` = (dy, dx)) binned in steps of
    1/L, L the longer side. sum_k P(k) = mean(f^2). Bins beyond the shorter side's Nyquist
    wavenumber hold only the corners of the spectral square. Output: a ``wavenumber`` dim
    (last for arrays), averaged over ``reduce_dims`` with ``weights``.
    """
    da, conv = as_dataarray(field, "field")
    if conv.kind != "xarray":
        dims = (da.dims[-2], da.dims[-1])
        conv.ndim = da.ndim
    for d in dims:
        if d not in da.dims:
            raise ValueError(f"spectrum dim {d!r} not in field dims {tuple(da.dims)}")
    index, lref = _radial_bins(da.sizes[dims[0]], da.sizes[dims[1]], *spacing)
    nbins = int(index.max()) + 1
    spec = xr.apply_ufunc(
        _radial_kernel, da, input_core_dims=[list(dims)], output_core_dims=[["wavenumber"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": nbins}, "allow_rechunk": True},
        kwargs={"index": index, "nbins": nbins},
    ).assign_coords(wavenumber=np.arange(nbins) / lref)
    out = reduce(spec.rename("power"), conv.dims(reduce_dims, [d for d in da.dims if d not in dims]), conv.weights(weights))
    return conv.back(out.transpose(..., "wavenumber"))


def band_power_ratio(forecast, truth, *, dims=("y", "x"), spacing=(1.0, 1.0), band=None) -> float:
    """Power of ``forecast`` over power of ``truth`` in a band of radial wavenumbers (1 = right amount).

    Both radial spectra (:func:`radial_spectrum`) are averaged over every other dim (members,
    times, ...: the two may differ, e.g. a ``member`` dim only in the forecast) and summed over
    ``band = (k_lo, k_hi)`` in cycles per domain (the longer side), inclusive; the default is the
    top half of the resolved wavenumbers, ``(N / 4, N / 2)`` for N points along the longer side,
    where smoothing and noise show first. Fields must be finite (a spectrum of a masked field is
    undefined); NaN is refused, naming the argument.
    """
    spectra = []
    for name, field in (("forecast", forecast), ("truth", truth)):
        da, _ = as_dataarray(field, name)
        if not bool(np.isfinite(da.values).all()):
            raise ValueError(f"band_power_ratio: {name} has non-finite values; a power spectrum needs a "
                             f"complete field (fill or crop masked points first)")
        spectra.append(np.asarray(radial_spectrum(field, dims=dims, spacing=spacing, reduce_dims="all")))
    pf, pt = spectra
    n = max(np.asarray(forecast).shape[-2:]) if not isinstance(forecast, (xr.DataArray, xr.Dataset)) else \
        max(forecast.sizes[d] for d in dims)
    lo, hi = (n / 4, n / 2) if band is None else band
    k = np.arange(min(len(pf), len(pt)))
    sel = (k >= lo) & (k <= hi)
    if not sel.any():
        raise ValueError(f"band_power_ratio: band {band} holds no wavenumber of a {n}-point grid")
    truth_power = pt[: len(k)][sel].sum()
    if truth_power <= 0:
        raise ValueError(f"band_power_ratio: the truth has no power in the band {(lo, hi)}")
    return float(pf[: len(k)][sel].sum() / truth_power)


def _zonal_kernel(f):
    n = f.shape[-1]
    power = np.abs(np.fft.rfft(f, axis=-1, norm="forward")) ** 2
    upper = power.shape[-1] if n % 2 else power.shape[-1] - 1  # exclude the Nyquist bin (n even)
    power[..., 1:upper] *= 2.0
    return power


def zonal_spectrum(field, *, lon_dim="lon", lat_dim="lat", density=False, radius=6.371e6,
                   reduce_dims=None, weights=None):
    """Zonal power spectrum along longitude at each latitude (numpy/torch: last axis).

        P(k) = c_k |F_k|^2,  c_0 = 1, c_k = 2 for 0 < k < N/2, c_{N/2} = 1 (N even)

    so sum_k P(k) = mean over longitude of f^2. ``density=True`` multiplies by the circumference
    2 pi R cos(lat) (needs ``lat_dim``), giving the spectral density per unit wavenumber of
    WeatherBench 2's ZonalEnergySpectrum (Rasp et al. 2024) but with the Nyquist bin counted once.
    Output: a ``wavenumber`` dim (integer zonal wavenumber; last for arrays).
    """
    da, conv = as_dataarray(field, "field")
    if conv.kind != "xarray":
        lon_dim = da.dims[-1]
        conv.ndim = da.ndim
    if lon_dim not in da.dims:
        raise ValueError(f"longitude dim {lon_dim!r} not in field dims {tuple(da.dims)}")
    n = da.sizes[lon_dim]
    spec = xr.apply_ufunc(
        _zonal_kernel, da, input_core_dims=[[lon_dim]], output_core_dims=[["wavenumber"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": n // 2 + 1}, "allow_rechunk": True},
    ).assign_coords(wavenumber=np.arange(n // 2 + 1))
    if density:
        if lat_dim not in da.coords:
            raise ValueError(f"density=True needs a latitude coordinate {lat_dim!r}")
        spec = spec * (2 * math.pi * radius * np.cos(np.deg2rad(da[lat_dim])))
    out = reduce(spec.rename("power"), conv.dims(reduce_dims, [d for d in da.dims if d != lon_dim]), conv.weights(weights))
    return conv.back(out.transpose(..., "wavenumber"))
