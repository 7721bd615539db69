"""Differentiable CRPS and energy score in torch: on the input's device, with gradients.

The numpy kernels of :mod:`sciffusion.metrics` detach tensors and score them on the CPU. These
functions keep the computation in torch (the public metrics send them every tensor that requires
grad or lives on a GPU, see :func:`torch_path`), so a score is a training loss (CRPS-trained generative
models: Pacchiardi et al. 2024; Lang et al. 2024, AIFS-CRPS; Kochkov et al. 2024, NeuralGCM) and
an ensemble on a GPU is scored where it lives. They take the keywords of their numpy siblings and
give the same values (to float tolerance) with the same conventions:

* ``member_dim`` is an integer axis of the forecast; a string (the default ``"member"``) means
  axis 0. The observation has the forecast's shape without that axis.
* ``reduce_dims`` are integer axes of the observation (``None`` keeps all, ``"all"``), averaged
  with optional ``weights`` (broadcast right-aligned against the observation). NaN points are
  skipped and their weights left out of the normaliser (xarray's ``weighted`` semantics).
* the result dtype is the forecast's float dtype (float64 for integers) unless ``dtype`` is given;
  NaN members are dropped per point with ``skipna``; a NaN observation gives NaN.

Gradients: invalid points are computed on zeros and masked with ``torch.where``, so a NaN
observation or member gives a NaN score but zero (never NaN) gradient to the other inputs. The
sort (CRPS) and the pairwise distances (energy score, via ``torch.cdist`` whose gradient at a zero
distance is 0) are differentiable almost everywhere; ties get a subgradient.

``torch`` is imported on first use, so ``import sciffusion.metrics`` stays torch-free.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import numpy as np

from ._core import _is_torch


def wants_torch(*arrays) -> bool:
    """True when a tensor among ``arrays`` needs the torch path: it requires grad or lives off the
    CPU. CPU tensors without gradients keep the numpy kernels (several times faster there)."""
    return any(_is_torch(a) and (a.requires_grad or a.device.type != "cpu") for a in arrays)


def torch_path(name: str):
    """Decorate a metric ``f(forecast, observation, ...)`` so that when :func:`wants_torch` of the
    two is true they are scored by ``torch_scores.<name>`` (same keywords) instead."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(forecast, observation, *args, **kwargs):
            if _is_torch(forecast) and wants_torch(forecast, observation):
                return globals()[name](forecast, observation, *args, **kwargs)
            return fn(forecast, observation, *args, **kwargs)

        return wrapper

    return deco


def _torch_dtype(dtype: Any):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.empty(0, np.dtype(dtype))).dtype


def _axes(dims: Any, ndim: int, name: str) -> list[int]:
    """Integer axes of an ``ndim``-d observation: None -> [], "all" -> every axis; ``"dim_k"`` (how
    the numpy path names axis k of an array) -> k."""
    if dims is None:
        return []
    if isinstance(dims, str) and dims == "all":
        return list(range(ndim))
    items = [dims] if isinstance(dims, (int, np.integer, str)) else list(dims)
    out = []
    for d in items:
        if isinstance(d, str) and re.fullmatch(r"dim_\d+", d):  # the numpy path's name of axis k
            d = int(d[4:])
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
            raise ValueError(f"{name} for tensors are integer axes of the observation, got {d!r}")
        if not -ndim <= d < ndim:
            raise ValueError(f"{name} axis {d} is out of range for {ndim}-d observation")
        out.append(int(d) % ndim)
    return sorted(set(out))


def _prepare(forecast, observation, member_dim, dtype):
    """Forecast moved member-last and the observation, both in the result dtype on one device."""
    import torch

    if forecast.ndim == 0:
        raise ValueError("forecast is a scalar; it needs a member axis")
    axis = member_dim if isinstance(member_dim, (int, np.integer)) else 0
    if not -forecast.ndim <= axis < forecast.ndim:
        raise ValueError(f"member axis {axis} is out of range for {forecast.ndim}-d forecast")
    dt = _torch_dtype(dtype) or (forecast.dtype if forecast.is_floating_point() else torch.float64)
    x = forecast.movedim(int(axis), -1).to(dt)
    y = torch.as_tensor(observation, device=forecast.device).to(dt)
    if tuple(y.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"observation shape {tuple(y.shape)} does not match forecast shape "
                         f"{tuple(forecast.shape)} without the member axis")
    return x, y


def reduce(score, reduce_dims: Any, weights: Any = None, ndim: int | None = None,
           kept: list[int] | None = None):
    """NaN-skipping (weighted) mean of ``score`` over observation axes ``reduce_dims``.

    ``score`` holds the observation axes ``kept`` (default all ``ndim`` of them); ``weights``
    broadcast right-aligned against the observation and must be constant along dropped axes.

        mean_w(s) = sum_p w_p s_p / sum_p w_p,  over points p with s_p not NaN (NaN if none)
    """
    import torch

    ndim = score.ndim if ndim is None else ndim
    kept = list(range(ndim)) if kept is None else kept
    axes = _axes(reduce_dims, ndim, "reduce_dims")
    for a in axes:
        if a not in kept:
            raise ValueError(f"reduce_dims axis {a} is an event axis; the score has observation axes {kept}")
    if weights is not None and not axes:
        raise ValueError("weights were given but reduce_dims is None; weights apply to the "
                         "average over reduce_dims (e.g. reduce_dims=[-2, -1])")
    if not axes:
        return score
    valid = ~torch.isnan(score)
    w = valid.to(score.dtype)
    if weights is not None:
        wt = torch.as_tensor(weights, device=score.device).to(score.dtype)
        if wt.ndim > ndim:
            raise ValueError(f"weights have {wt.ndim} dims, more than the {ndim}-d observation")
        if bool(torch.isnan(wt).any()):
            raise ValueError("weights contain NaN")
        wt = wt.reshape((1,) * (ndim - wt.ndim) + tuple(wt.shape))
        if any(wt.shape[a] != 1 for a in range(ndim) if a not in kept):
            raise ValueError("weights vary along an event axis; they weight the score's points")
        wt = wt.reshape([wt.shape[a] for a in kept])
        try:
            fits = torch.broadcast_shapes(wt.shape, score.shape) == score.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"weights of shape {tuple(wt.shape)} do not broadcast against the "
                             f"score's shape {tuple(score.shape)}")
        w = w * wt
    dims = [kept.index(a) for a in axes]
    num = (torch.where(valid, score, torch.zeros_like(score)) * w).sum(dims)
    den = w.sum(dims)
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, math.nan))


def _finish(total_skill, total_spread, cnt, bad, fair):
    """skill / m - spread / K with K = m^2 or m(m-1); NaN at ``bad`` points, finite gradients."""
    import torch

    bad = bad | (cnt < (2 if fair else 1))
    k = cnt * (cnt - 1) if fair else cnt * cnt
    one = torch.ones_like(cnt)
    score = total_skill / torch.where(bad, one, cnt) - total_spread / torch.where(bad, one, k)
    return torch.where(bad, torch.full_like(score, math.nan), score)


def crps_ensemble(forecast, observation, *, member_dim="member", fair=False, reduce_dims=None,
                  weights=None, skipna=True, dtype=None):
    """Ensemble CRPS of a torch forecast (standard or fair), differentiable, on its device.

        CRPS = (1/M) sum_i |x_i - y| - (1/K) sum_i (2i - M - 1) x_(i),
        K = M^2 (standard, the CRPS of the empirical CDF) or M (M - 1) (``fair=True``)

    with x_(1) <= ... <= x_(M) the sorted members: O(M log M) per point, the gradient flows
    through the sort. Members are centred on the observation first (float32 stays accurate for
    offset fields). Keywords as :func:`sciffusion.metrics.crps_ensemble`.

    References: Hersbach (2000), Wea. Forecasting 15, 559; Ferro (2014), QJRMS 140, 1917;
    Zamo & Naveau (2018), Math. Geosci. 50, 209.
    """
    import torch

    x, y = _prepare(forecast, observation, member_dim, dtype)
    m = x.shape[-1]
    obs_nan, x_nan = torch.isnan(y), torch.isnan(x)
    d = x - torch.where(obs_nan, torch.zeros_like(y), y).unsqueeze(-1)
    zero = torch.zeros_like(d)
    if skipna:  # NaN members sort last (as +inf) and drop out of the coefficients
        cnt = (~x_nan).sum(-1).to(x.dtype)
        srt = torch.where(x_nan, torch.full_like(d, math.inf), d).sort(dim=-1).values
        bad = obs_nan
    else:
        cnt = torch.full_like(y, float(m))
        srt = torch.where(x_nan, zero, d).sort(dim=-1).values
        bad = obs_nan | x_nan.any(-1)
    pos = torch.arange(1, m + 1, device=x.device, dtype=x.dtype)
    inside = pos <= cnt.unsqueeze(-1)
    coef = torch.where(inside, 2 * pos - cnt.unsqueeze(-1) - 1, zero)
    spread = (coef * torch.where(inside, srt, zero)).sum(-1)
    skill = torch.where(x_nan, zero, d).abs().sum(-1)
    score = _finish(skill, spread, cnt, bad, fair)
    return reduce(score, reduce_dims, weights)


def crps_gaussian(mu, sigma, observation, *, reduce_dims=None, weights=None):
    """CRPS of N(mu, sigma^2) against ``observation``, differentiable in all three, on their device.

        CRPS = sigma [ z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi) ],  z = (y - mu) / sigma

    (Gneiting et al. 2005, Mon. Wea. Rev. 133, 1098, eq. 5). Inputs broadcast; the dtype is their
    promoted float dtype; ``reduce_dims`` are axes of the broadcast result.
    """
    import torch

    tensors = [a for a in (observation, mu, sigma) if _is_torch(a)]
    dt = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    dt = dt if dt.is_floating_point else torch.float64
    dev = tensors[0].device
    mu, sigma, y = (torch.as_tensor(a, device=dev).to(dt) for a in (mu, sigma, observation))
    z = (y - mu) / sigma
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    score = sigma * (z * (2 * torch.special.ndtr(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    return reduce(score, reduce_dims, weights)


def energy_score(forecast, observation, *, member_dim="member", event_dims=(), fair=False,
                 reduce_dims=None, weights=None, skipna=True):
    """Energy score of a torch forecast over the event axes, differentiable, on its device.

        ES = (1/M) sum_i ||x_i - y|| - 1/(2K) sum_ij ||x_i - x_j||,  K = M^2 or M(M-1) (``fair``)

    with the Euclidean norm over ``event_dims`` (integer axes of the observation; the score keeps
    the other axes, and ``reduce_dims`` may name only those). Distances come from ``torch.cdist``
    without the matrix-product shortcut (exact zeros on the diagonal, gradient 0 there). With
    ``skipna`` a member with any NaN in the event vector is dropped at that point.
    Gneiting & Raftery (2007), JASA 102, 359, eq. 22.
    """
    import torch

    x, y = _prepare(forecast, observation, member_dim, None)
    m, ndim = x.shape[-1], y.ndim
    ev = _axes(event_dims, ndim, "event_dims")
    kept = [a for a in range(ndim) if a not in ev]
    lead = [y.shape[a] for a in kept]
    x = x.permute(*kept, ndim, *ev).reshape(lead + [m, -1])
    y = y.permute(*kept, *ev).reshape(lead + [1, -1])
    obs_nan, x_nan = torch.isnan(y).any(-1).squeeze(-1), torch.isnan(x).any(-1)
    d = torch.where(torch.isnan(x), 0.0, x) - torch.where(torch.isnan(y), 0.0, y)
    v = (~x_nan).to(x.dtype) if skipna else torch.ones_like(x_nan, dtype=x.dtype)
    skill = (torch.linalg.vector_norm(d, dim=-1) * v).sum(-1)
    dist = torch.cdist(d, d, compute_mode="donot_use_mm_for_euclid_dist")
    spread = 0.5 * (dist * v.unsqueeze(-1) * v.unsqueeze(-2)).sum((-2, -1))
    bad = obs_nan if skipna else obs_nan | x_nan.any(-1)
    score = _finish(skill, spread, v.sum(-1), bad, fair)
    return reduce(score, reduce_dims, weights, ndim=ndim, kept=kept)
