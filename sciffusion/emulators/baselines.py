"""Statistical baselines a generative ensemble emulator has to beat: raw seeds, a Gaussian around
the seed mean, and EMOS / non-homogeneous Gaussian regression.

All take the seeds as the emulators do: xarray (Dataset or DataArray) with a ``member`` dim of K
seed members, e.g. ``(init_time, lead_time, member, *grid)``, and the truth without ``member``.
Parameters are fitted on training data only (``fit(seeds, truth)``) and, per variable, separately
for each value of the ``keep`` dims (default: each lead time), pooled over all other dims.

* :func:`raw_seeds`: the K seeds themselves, as a K-member ensemble.
* :class:`GaussianAroundSeeds`: ``N(mean_k s_k, sigma^2)`` with ``sigma`` the training RMSE of the
  seed mean (the CRPS-optimal spread for Gaussian errors).
* :class:`EMOS`: ``N(a + b mean_k s_k, c + d var_k s_k)`` (Gneiting et al. 2005, Mon. Wea. Rev.
  133, 1098), ``a, b, c, d`` by minimum mean CRPS on training data (L-BFGS with the analytic
  gradient; ``c = gamma^2``, ``d = delta^2`` keep the variance positive); ``var`` is the
  unbiased (ddof = 1) seed variance.

The Gaussian baselines give ``predict(seeds) -> (mu, sigma)``, exact scores by :meth:`crps`
(:func:`sciffusion.metrics.crps_gaussian`), and ``generate(seeds, n_members, seed)``: members
``mu + sigma z_m`` with ``z_m`` seeded by ``(seed, variable, m)``, so member m is the same draw
whatever ``n_members`` (the ``member`` dim takes the place of the seeds' one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy.optimize import minimize
from scipy.stats import norm

import sciffusion.metrics as sm


def _dataset(x) -> tuple[xr.Dataset, bool]:
    if isinstance(x, xr.DataArray):
        return x.to_dataset(name=x.name or "x"), True
    return x, False


def _truth(truth, like: xr.Dataset) -> xr.Dataset:
    """The truth as a Dataset with the seeds' variable names (a DataArray takes the seeds' one name)."""
    return truth.to_dataset(name=next(iter(like.data_vars))) if isinstance(truth, xr.DataArray) else truth


def _back(ds: xr.Dataset, was_array: bool):
    return ds[next(iter(ds.data_vars))] if was_array else ds


def raw_seeds(ensemble, n_seeds: int = 2, member_dim: str = "member"):
    """The first ``n_seeds`` members of a physics ``ensemble``: the seeds, scored as an ensemble."""
    return ensemble.isel({member_dim: slice(0, int(n_seeds))})


class GaussianBaseline:
    """A Gaussian predictive law per point from seed statistics; subclasses implement ``fit`` and ``predict``.

    Args:
        keep: dims with their own parameters (those present in the data); default the lead time.
        member_dim: the seeds' ensemble dim.
    """

    def __init__(self, keep: Sequence[str] = ("lead_time",), member_dim: str = "member"):
        self.keep, self.member_dim = tuple(keep), member_dim
        self.params: dict[str, xr.Dataset] = {}

    def _stats(self, seeds):
        ds, arr = _dataset(seeds)
        return ds.mean(self.member_dim), ds.var(self.member_dim, ddof=1), arr

    def _pooled(self, da: xr.DataArray) -> list[str]:
        return [d for d in da.dims if d not in self.keep]

    def predict(self, seeds):
        """``(mu, sigma)``, like the seeds without their member dim."""
        raise NotImplementedError

    def crps(self, seeds, truth, reduce_dims="all", weights=None):
        """Exact CRPS of the Gaussian law against ``truth`` (:func:`sciffusion.metrics.crps_gaussian`)."""
        mu, sigma = self.predict(seeds)
        return sm.crps_gaussian(mu, sigma, truth, reduce_dims=reduce_dims, weights=weights)

    def generate(self, seeds, n_members: int, seed: int = 0):
        """``n_members`` draws ``mu + sigma z_m`` on the seeds' layout (member dim where the seeds' was)."""
        mu, sigma = self.predict(seeds)
        ds, arr = _dataset(seeds)
        mu, _ = _dataset(mu)
        sigma, _ = _dataset(sigma)
        out = {}
        for i, (name, m) in enumerate(mu.data_vars.items()):
            z = np.stack([np.random.default_rng([seed, i, k]).standard_normal(m.shape) for k in range(n_members)])
            member = m + sigma[name] * xr.DataArray(z, dims=(self.member_dim, *m.dims))
            out[name] = member.transpose(*ds[name].dims).assign_attrs(ds[name].attrs)
        res = xr.Dataset(out, attrs={"title": f"{type(self).__name__} baseline ({n_members} members)"})
        return _back(res.assign_coords({self.member_dim: np.arange(n_members)}), arr)


class GaussianAroundSeeds(GaussianBaseline):
    """``N(seed mean, sigma^2)``, ``sigma`` = training RMSE of the seed mean per ``keep`` value."""

    def fit(self, seeds, truth) -> GaussianAroundSeeds:
        mean, _, _ = self._stats(seeds)
        obs = _truth(truth, mean)
        for name, m in mean.data_vars.items():
            err2 = (m - obs[name]) ** 2
            self.params[name] = xr.Dataset({"sigma": np.sqrt(err2.mean(self._pooled(err2)))})
        return self

    def predict(self, seeds):
        mean, _, arr = self._stats(seeds)
        sigma = xr.Dataset({k: self.params[k]["sigma"].broadcast_like(v) for k, v in mean.data_vars.items()})
        return _back(mean, arr), _back(sigma, arr)


def fit_ngr(mean: np.ndarray, var: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """``(a, b, c, d)`` minimising the mean CRPS of ``N(a + b mean, c + d var)`` against ``y`` (1-D arrays)."""
    mean, var, y = (np.asarray(v, dtype=np.float64).ravel() for v in (mean, var, y))
    ok = np.isfinite(mean) & np.isfinite(var) & np.isfinite(y)
    mean, var, y = mean[ok], var[ok], y[ok]
    b0, a0 = np.polyfit(mean, y, 1) if mean.std() > 0 else (0.0, y.mean())
    c0 = np.var(y - a0 - b0 * mean)

    def loss(p):
        a, b, g, d = p
        sig = np.sqrt(g * g + d * d * var + 1e-12)
        mu = a + b * mean
        z = (y - mu) / sig
        dmu, dsig = 1 - 2 * norm.cdf(z), 2 * norm.pdf(z) - 1 / np.sqrt(np.pi)
        value = float(sm.crps_gaussian(mu, sig, y, reduce_dims="all"))
        grad = [dmu.mean(), (dmu * mean).mean(), (dsig * g / sig).mean(), (dsig * d * var / sig).mean()]
        return value, np.array(grad)

    p = minimize(loss, [a0, b0, np.sqrt(0.5 * c0), 0.5], jac=True, method="L-BFGS-B").x
    return float(p[0]), float(p[1]), float(p[2] ** 2), float(p[3] ** 2)


class EMOS(GaussianBaseline):
    """EMOS / NGR: ``N(a + b mean, c + d var)``, ``a, b, c, d`` per variable and ``keep`` value
    by minimum training CRPS (:func:`fit_ngr`); ``params[var]`` holds them as a Dataset."""

    def fit(self, seeds, truth) -> EMOS:
        mean, var, _ = self._stats(seeds)
        obs = _truth(truth, mean)
        for name, m in mean.data_vars.items():
            m, v, y = xr.broadcast(m, var[name], obs[name])
            keep = [d for d in m.dims if d in self.keep]
            stack = lambda da: da.stack(_case=self._pooled(da)).transpose(*keep, "_case")  # noqa: E731
            m, v, y = stack(m), stack(v), stack(y)
            shape = [m.sizes[d] for d in keep]
            coef = np.array([fit_ngr(m.values[i], v.values[i], y.values[i]) for i in np.ndindex(*shape)])
            coords = {d: m[d] for d in keep if d in m.coords}
            self.params[name] = xr.Dataset({c: (keep, coef[:, j].reshape(shape)) for j, c in enumerate("abcd")},
                                           coords=coords)
        return self

    def predict(self, seeds):
        mean, var, arr = self._stats(seeds)
        p = self.params
        mu = xr.Dataset({k: p[k]["a"] + p[k]["b"] * v for k, v in mean.data_vars.items()})
        sigma = xr.Dataset({k: np.sqrt(p[k]["c"] + p[k]["d"] * var[k]) for k in mean.data_vars})
        return _back(mu, arr), _back(sigma, arr)
