"""Cycled assimilation with xarray in and out, streamed to a resumable zarr store.

``assimilate(model, initial, observations, operator=..., noise_std=...)`` runs the forecast ->
analysis cycle of :mod:`sciffusion.assimilate` with a :mod:`sciffusion.systems` model as the
forecast, one cycle per observation time, and returns (or writes) a Dataset::

    {v}_analysis        (time, member, *dims)   the analysis ensemble of each model variable v
    {v}_forecast_mean   (time, *dims)           mean and std (ddof=1) of the forecast ensemble
    {v}_forecast_spread (time, *dims)
    observations        (time, *obs dims)       as given (NaN: missing); obs dims that share a
                                                state dim's name are renamed ``obs_{dim}``
    analysis_seconds    (time,)                 wall time of each analysis
    {v}_truth           (time, *dims)           only with ``truth=``
    {v}_mda_chain       (time, member, *dims)   only with ``mda=True``: the chain ensemble after each
                                                cycle, at the next window's start (what a resume needs)

The forecast is stored as mean and spread, not as members: that is what the forecast scores
(RMSE, rmv) need, and the store stays half the size (at 10,000 variables x 24 members x 2,000
cycles the analysis ensemble alone is 3.8 GB in float64).

Randomness never threads through cycles: member ``m``'s model noise in the forecast to cycle
``t`` comes from ``member_generator(seed, t, m)`` and the analysis of cycle ``t`` from
``member_generators(seed, 1, key=(_ANALYSIS_KEY, t))``. A run killed after cycle ``k`` and
resumed (``mode="resume"``) reads the analysis ensemble of cycle ``k`` back from the store and
continues: the result equals the uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import time as _time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch
import xarray as xr

from sciffusion.assimilate.analysis import analysis
from sciffusion.assimilate.cycle import (analyse, check_domains, check_inputs, check_lag, check_mda, check_relaxation,
                                        lagged_analysis, mda_analysis, mda_weights)
from sciffusion.assimilate.forecast_prior import ForecastPrior, check_prior, forecast_prior_analysis
from sciffusion.assimilate.local import Domains, default_guidance
from sciffusion.diffusion import member_generators
from sciffusion.systems.base import member_generator, steps_in

_INIT_KEY = 2**32 - 2  # seed key of the initial perturbations (cycles use keys 0..T-1)
_ANALYSIS_KEY = 2**32 - 3  # first seed key of the analysis generators


def _fingerprint(value) -> str | float | int | bool | None:
    """A JSON-able value for the provenance record: numbers as they are, arrays by a short hash."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    arr = np.ascontiguousarray(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float64))
    if arr.size == 1:
        return float(arr.reshape(()))
    return f"sha256:{hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]}"


def _describe(operator, x0: torch.Tensor) -> str:
    """The operator's name and a hash of its output on the initial ensemble (a Mask's repr does not show
    its mask; a local function's repr holds an address that changes from run to run)."""
    name = getattr(operator, "__qualname__", type(operator).__name__)
    with torch.no_grad():
        return f"{name} {_fingerprint(torch.as_tensor(operator(x0)))}"


def _prior(prior, x0: torch.Tensor, domains, options: dict) -> tuple[object, str, str | None]:
    """``(prior, description, path)``: the prior (a saved one loaded onto the ensemble's device), checked on
    the initial ensemble as :func:`~sciffusion.assimilate.cycle` checks it, with the description the
    provenance records: a :class:`ForecastPrior` by a hash of its weights and normalisation (the same
    prior in memory or saved gives the same record), any other conditional denoiser by its name and a
    hash of its output on the initial ensemble (as ``_describe`` an operator)."""
    path = None
    if isinstance(prior, (str, os.PathLike)):
        path = os.fspath(prior)
        prior = ForecastPrior.load(path, device=x0.device)
    den = check_prior(prior, x0, domains)
    # options of the ensemble prior's analysis() that the forecast prior's analysis does not take
    own = set(inspect.signature(analysis).parameters) - set(inspect.signature(forecast_prior_analysis).parameters)
    if own & set(options):
        raise TypeError(f"option(s) {sorted(own & set(options))} belong to the ensemble prior's analysis(); "
                        "with prior= the analysis is forecast_prior_analysis, which does not take them")
    if isinstance(prior, ForecastPrior):
        weights = [t.detach().cpu().double().flatten() for t in prior.denoiser.state_dict().values()]
        tensors = torch.cat([*weights, prior.mean.flatten(), prior.std.flatten(),
                             torch.tensor([prior.scale], dtype=torch.float64)])
        return prior, f"ForecastPrior {_fingerprint(tensors)}", path
    name = getattr(prior, "__qualname__", type(prior).__qualname__)
    sigma = torch.full((x0.shape[0],), float(getattr(den, "scale", 1.0)), dtype=torch.float64, device=x0.device)
    with torch.no_grad():
        return prior, f"{name} {_fingerprint(den(x0.to(torch.float64), sigma, cond=x0.to(torch.float64)))}", path


def _refuse_dropped_settings(out, settings: dict) -> None:
    """ValueError if the store ``out`` was written with an analysis setting this run leaves out (an
    ``analysis_*`` option, ``prior``, ``domains`` or ``function``): ``check_provenance`` compares the
    keys a run has, so a dropped option, which falls back to its default, must be caught here."""
    import zarr

    try:
        stored = dict(zarr.open_group(os.fspath(out), mode="r", use_consolidated=False).attrs)
    except FileNotFoundError:  # no store there, or no zarr group: the BlockStore says which
        return
    dropped = [k for k, v in stored.items() if (k.startswith("analysis_") or k in ("prior", "domains", "function"))
               and k not in settings and v != "None"]
    if dropped:
        details = "; ".join(f"{k}: stored {stored[k]!r}, now none" for k in dropped)
        raise ValueError(f"cannot resume {os.fspath(out)!r}: it was written with other settings ({details}); "
                         "use --overwrite (mode='w') or resume with the same settings")


def _state_shape(model) -> tuple[int, ...]:
    return tuple(model.initial_state(1, torch.Generator().manual_seed(0)).shape[1:])


def to_state(model, ds: xr.Dataset, member_dim: str = "member") -> torch.Tensor:
    """The state tensor ``(N, *state)`` of ``model`` from a Dataset of its variables on ``(member, *dims)``;
    the fields of the result must give back the Dataset's values (else ValueError)."""
    variables, shape = model.variables(), _state_shape(model)
    arrays = []
    for name, var in variables.items():
        if name not in ds:
            raise ValueError(f"the initial ensemble lacks model variable {name!r} (has {sorted(map(str, ds.data_vars))})")
        extra = set(ds[name].dims) - {member_dim, *var.dims}
        if extra or set(var.dims) - set(ds[name].dims):
            raise ValueError(f"variable {name!r} has dims {ds[name].dims}; the model's are ({member_dim!r}, *{var.dims})")
        arrays.append(ds[name].transpose(member_dim, *var.dims).values)
    n = arrays[0].shape[0]
    flat = np.concatenate([a.reshape(n, -1) for a in arrays], axis=1)
    if flat.shape[1] != int(np.prod(shape)):
        raise ValueError(f"the variables {list(variables)} hold {flat.shape[1]} values per member, "
                         f"the {model.name} state {shape} has {int(np.prod(shape))}")
    x = torch.as_tensor(flat, dtype=model.dtype).reshape(n, *shape).to(model.device)
    for (name, a), f in zip(zip(variables, arrays), model.fields(x).values()):
        if f.shape[1:] != a.shape[1:] or not np.array_equal(f.cpu().numpy(), a, equal_nan=True):
            raise ValueError(f"cannot rebuild the {model.name} state from its field {name!r}: "
                             "this system's state is not its output fields")
    return x


def _observation_times(obs: xr.DataArray, t0: float, dt: float) -> np.ndarray:
    """Per-cycle step counts; ValueError naming the time that is not increasing or not on the model's dt."""
    if "time" not in obs.dims:
        raise ValueError(f"observations need a 'time' dim (the analysis times), got dims {obs.dims}")
    if obs.dims[0] != "time":
        obs = obs.transpose("time", ...)
    t = np.asarray(obs["time"].values) if "time" in obs.coords else None
    if t is None or t.dtype.kind not in "iuf":
        raise ValueError("observations need a numeric 'time' coordinate in the model's time units")
    t = t.astype(np.float64).tolist()
    steps = np.diff([t0, *t]) / dt
    for i, s in enumerate(steps):
        if s <= 0:
            raise ValueError(f"observation time {t[i]:g} (index {i}) does not come after "
                             f"{t0 if i == 0 else t[i - 1]:g}: the time axis must increase from the initial time {t0:g}")
        if abs(s - round(s)) > 1e-6 * max(1.0, s):
            raise ValueError(f"observation time {t[i]:g} (index {i}) is not a multiple of the model step dt={dt} "
                             f"after the initial time {t0:g}")
    return np.round(steps).astype(int)


def _template(model, n, obs, times, truth, lazy: bool, chain: bool = False) -> xr.Dataset:
    import dask.array as da

    shape = {d: len(c.values) for d, c in model.coords().items()}
    state_dims = set(shape)
    obs = obs.rename({d: f"obs_{d}" for d in obs.dims if d in state_dims})
    full = (lambda s: da.zeros(s, chunks=-1, dtype=np.float64)) if lazy else (lambda s: np.full(s, np.nan))
    coords = {"time": ("time", times, {"long_name": "analysis time", "units": model.time_units}),
              "member": ("member", np.arange(n), {"long_name": "ensemble member"})}
    coords.update({d: (d, c.values, c.attrs) for d, c in model.coords().items()})
    coords.update({k: v for k, v in obs.coords.items() if "time" not in v.dims and k != "time"})
    data = {}
    for name, var in model.variables().items():
        dims, s = var.dims, [shape[d] for d in var.dims]
        attrs = dict(var.attrs)
        data[f"{name}_analysis"] = (("time", "member", *dims), full((len(times), n, *s)),
                                    {**attrs, "long_name": f"analysis ensemble of {attrs.get('long_name', name)}"})
        data[f"{name}_forecast_mean"] = (("time", *dims), full((len(times), *s)),
                                         {**attrs, "long_name": f"forecast ensemble mean of {attrs.get('long_name', name)}"})
        data[f"{name}_forecast_spread"] = (("time", *dims), full((len(times), *s)),
                                           {**attrs, "long_name": "forecast ensemble standard deviation (ddof=1) of "
                                            + attrs.get("long_name", name)})
        if chain:  # what a resume of cycle(..., mda=True) needs
            data[f"{name}_mda_chain"] = (("time", "member", *dims), full((len(times), n, *s)),
                                         {**attrs, "long_name": "multiple data assimilation chain ensemble of "
                                          + attrs.get("long_name", name) + " after this cycle (at the next "
                                          "window's start)"})
        if truth is not None:
            data[f"{name}_truth"] = (("time", *dims), full((len(times), *s)), {**attrs, "long_name": f"truth of {name}"})
    data["observations"] = (obs.dims, full(obs.shape), {**obs.attrs, "long_name": obs.attrs.get("long_name", "observations")})
    data["analysis_seconds"] = (("time",), full((len(times),)), {"long_name": "wall time of the analysis", "units": "s"})
    return xr.Dataset(data, coords=coords)


def assimilate(model, initial: xr.Dataset, observations: xr.Dataset | xr.DataArray, *, operator, noise_std,
               n_members: int | None = None, perturbation: float | None = None, seed: int = 0,
               truth: xr.Dataset | None = None, out: str | os.PathLike | None = None, mode: str = "w-",
               cycles_per_block: int = 10, progress: bool = True,
               callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
               domains: Domains | None = None, function: Callable[[torch.Tensor], torch.Tensor] | None = None,
               prior=None, **analysis_options) -> xr.Dataset:
    """Assimilate ``observations`` cycle by cycle into ensemble forecasts of ``model``; see the module docstring.

    Args:
        model: a :class:`sciffusion.systems.base.System` (its ``step`` is the forecast; its
            ``fields``/``variables``/``coords`` name the output).
        initial: the model's variables on ``(member, *dims)`` (the initial analysis ensemble), or on
            ``dims`` only with ``n_members`` members drawn as ``model.perturb(initial, g_m, perturbation)``
            (``g_m = member_generator(seed, _INIT_KEY, m)``). A scalar ``time`` coordinate is the
            initial time (default 0).
        observations: a DataArray (or a Dataset with one variable) on ``(time, *obs dims)``; ``time``
            are the analysis times, increasing multiples of ``model.dt`` after the initial time; NaN: missing.
        operator: observation operator on the state tensor, ``(B, *state) -> (B, *obs)``.
        noise_std: observation noise std: scalar, per observation entry, or per time and entry.
        seed: seeds the initial perturbations, the model noise and every analysis.
        truth: optional Dataset of the model's variables on ``(time, *dims)``, stored as ``{v}_truth``.
        out, mode: zarr store streamed to in blocks of ``cycles_per_block`` times (``"w-"``, ``"w"``,
            ``"resume"``: after checking the store was written with these settings and inputs).
        progress: a tqdm bar, one step per cycle.
        callback: ``callback(t, forecast, analysis)`` after each cycle (tensors ``(N, *state)``).
        domains, function: analyse each cycle by :func:`~sciffusion.assimilate.local_analysis` (large
            states), as in :func:`~sciffusion.assimilate.cycle`; ``operator`` must be the same pointwise
            observation (checked before the first cycle).
        prior: a trained :class:`~sciffusion.assimilate.ForecastPrior`, the path of one saved with
            :meth:`~sciffusion.assimilate.ForecastPrior.save`, or any conditional denoiser
            ``(x, sigma, cond=x_f)`` of the state: analyse each cycle by
            :func:`~sciffusion.assimilate.forecast_prior_analysis`, as :func:`~sciffusion.assimilate.cycle`
            does with ``prior=``; its state shape is checked before the first cycle (no ``domains``).
            Recorded in the attributes as ``prior`` (a hash of its weights; ``prior_path`` when loaded
            from a path), so a resume with another prior is refused. None (default): the forecast
            ensemble's prior.
        **analysis_options: keywords of :func:`~sciffusion.assimilate.analysis` (with ``prior``: of
            :func:`~sciffusion.assimilate.forecast_prior_analysis`), and ``rtps``/``rtpp``
            (:func:`~sciffusion.assimilate.relax`, after any analysis; recorded like the others), and
            ``lag=K``: the four-dimensional analysis of :func:`~sciffusion.assimilate.cycle` over the last
            ``K`` observation times (a deterministic model only; a resume reads the last ``K`` analyses back),
            with ``mda=True`` (and ``mda_inflation``) its multiple data assimilation: the chain ensemble is
            then stored as ``{v}_mda_chain`` after each cycle, and a resume reads the last one back.

    Returns the Dataset of the module docstring (opened from the store with ``out=``), with the
    provenance (settings, seed, sciffusion version) in its attributes.
    """
    from tqdm.auto import tqdm

    from sciffusion import __version__
    from sciffusion.data.store import BlockStore

    if isinstance(observations, xr.Dataset):
        if len(observations.data_vars) != 1:
            raise ValueError(f"observations: pass one variable, got {sorted(map(str, observations.data_vars))}")
        observations = next(iter(observations.data_vars.values()))
    if "time" in observations.dims:
        observations = observations.transpose("time", ...)
    t0 = float(initial["time"].values) if "time" in initial.coords and initial["time"].ndim == 0 else 0.0
    steps = _observation_times(observations, t0, model.dt)
    if "member" in initial.dims:
        x0 = to_state(model, initial)
    else:
        if n_members is None or perturbation is None:
            raise ValueError("initial has no 'member' dim: pass n_members and perturbation to draw the initial ensemble")
        base = to_state(model, initial.expand_dims(member=1))
        x0 = torch.cat([model.perturb(base, member_generator(seed, _INIT_KEY, m), perturbation)
                        for m in range(int(n_members))])
    for d in observations.dims[1:]:
        if d in model.coords() and observations.sizes[d] == len(model.coords()[d].values) and d in observations.coords \
                and not np.array_equal(observations[d].values, model.coords()[d].values):
            raise ValueError(f"observations' {d!r} coordinate differs from the model's {d!r} grid")
    obs_values = observations.values
    y = torch.as_tensor(obs_values, dtype=torch.float64)
    std = np.asarray(noise_std.transpose(*[d for d in observations.dims if d in noise_std.dims]).values
                     if isinstance(noise_std, xr.DataArray) else noise_std, dtype=np.float64)
    std = check_inputs(x0, operator, y, torch.as_tensor(std), len(steps))
    check_domains(x0, operator, domains, function)
    check_relaxation(analysis_options)
    prior_path = None
    if prior is not None:
        prior, prior_description, prior_path = _prior(prior, x0, domains, analysis_options)
        trained = getattr(prior, "interval", None)  # a ForecastPrior learned forecasts over this lead time
        if trained is not None:
            for i, s in enumerate(steps):
                if abs(s * model.dt - trained) > 1e-6 * max(1.0, trained):
                    raise ValueError(f"the forecast prior was trained on forecasts over interval {trained:g} model time "
                                     f"units, but observation time index {i} comes {s * model.dt:g} after the one "
                                     "before: train a prior on this interval, or observe at its interval")
    lag = analysis_options.get("lag", 1)  # recorded as analysis_lag; not an option of the analysis itself
    mda = analysis_options.get("mda", False)  # recorded as analysis_mda(_inflation), and so are the next two
    check_mda(lag, mda, analysis_options.get("mda_inflation", 1.0))
    if lag != 1:
        if getattr(model, "noise_std", 0):
            raise ValueError(f"lag={lag} differentiates the observations through the forecast, which must be "
                             f"deterministic: model {model.name} has noise_std={model.noise_std}")
        check_lag(lambda e: model.step(e, int(steps[0])), x0, operator, lag, domains, prior)
    if truth is not None:
        truth = truth.transpose("time", ...)
        if truth.sizes.get("time") != len(steps):
            raise ValueError(f"truth has {truth.sizes.get('time')} times, the observations {len(steps)}")

    if domains is not None and analysis_options.get("guidance") is None \
            and default_guidance(analysis_options.get("space", "state"), function) == "exact":
        analysis_options["guidance"] = "exact"  # recorded: a store of the earlier default (MMPS) does not resume
    n, names = x0.shape[0], list(model.variables())
    settings = {"system": model.name, "system_params": json.dumps(model.params(), sort_keys=True, default=str),
                "n_members": n, "seed": int(seed), "initial": _fingerprint(x0), "observations": _fingerprint(
                    np.nan_to_num(obs_values, nan=-9.9e99)), "observation_times": _fingerprint(
                    observations["time"].values), "noise_std": _fingerprint(std), "operator": _describe(operator, x0),
                **{f"analysis_{k}": _fingerprint(v) for k, v in sorted(analysis_options.items())}}
    if domains is not None:  # a store written with other domains or another function does not resume
        fields = [getattr(domains, f.name) for f in dataclasses.fields(domains)]
        settings["domains"] = _fingerprint(torch.cat([v.flatten().double() for v in fields if v is not None]))
        settings["function"] = getattr(function, "__qualname__", repr(function))
    if prior is not None:  # a store written with another prior (or none) does not resume
        settings["prior"] = prior_description
    attrs = {"title": f"sciffusion {model.name} assimilation", "Conventions": "CF-1.8",
             "source": f"sciffusion {__version__} sciffusion.assimilate.assimilate", "sciffusion_version": __version__,
             **{k: v if v is not None else "None" for k, v in settings.items()},
             **({} if prior_path is None else {"prior_path": prior_path})}
    if out is not None and mode == "resume":  # the keys this run lacks; the BlockStore compares the others
        _refuse_dropped_settings(out, settings)
    template = _template(model, n, observations, observations["time"].values, truth, lazy=out is not None, chain=mda)
    template.attrs.update(attrs)
    store = None if out is None else BlockStore(out, template, dim="time", block=cycles_per_block, mode=mode,
                                                provenance={k: attrs[k] for k in settings})
    done = 0 if store is None else store.written()
    kept = deque([x0], maxlen=lag)  # the analyses of the last `lag` times (the initial ensemble at time -1)
    if done:  # with mda: the last chain, the next window's prior
        written, kind = xr.open_zarr(store.path, consolidated=False), "mda_chain" if mda else "analysis"
        for i in range(max(0, done - (1 if mda else lag)), done):
            kept.append(to_state(model, xr.Dataset({v: written.isel(time=i)[f"{v}_{kind}"] for v in names})))
    x = chain = kept[-1]
    block = store.block if store is not None else len(steps)
    buffer: dict[str, list] = {}
    truth_values = {} if truth is None else {v: truth[v].transpose("time", *model.variables()[v].dims).values
                                             for v in names}
    options = {k: v for k, v in analysis_options.items() if k not in ("lag", "mda", "mda_inflation")}
    chain_options = {**options, "inflation": analysis_options.get("mda_inflation", 1.0)}
    bar = tqdm(total=len(steps), initial=done, desc=f"{model.name} assimilation", unit="cycle", disable=not progress)
    for t in range(done, len(steps)):
        g = member_generators(seed, 1, key=(_ANALYSIS_KEY, t))[0]
        if lag == 1:
            xf = model.step(x, int(steps[t]), generator=[member_generator(seed, t, m) for m in range(n)])
            start = _time.perf_counter()
            x = analyse(xf, operator, y[t], std[t], domains, function, g, options, prior)
            seconds = _time.perf_counter() - start
        elif mda:  # the output and the chain's step from the chain at the window's start (see cycle)
            start, remaining, weight = mda_weights(t, lag)
            window = [lambda e, s=int(s): model.step(e, s) for s in steps[start + 1:t + 1]]
            g_chain = member_generators(seed, 1, key=(_ANALYSIS_KEY, t, 1))[0]  # the chain's own stream
            xf, x, chain, seconds = mda_analysis(chain, window, operator, y[start + 1:t + 1], std[start + 1:t + 1],
                                                 remaining, weight, (g, g_chain), options, chain_options)
        else:  # the analysis of time t - k, given the window's observations, carried to t (see cycle)
            k = min(lag, t + 1)
            window = [lambda e, s=int(s): model.step(e, s) for s in steps[t - k + 1:t + 1]]
            xf, x, seconds = lagged_analysis(kept[-k], window, operator, y[t - k + 1:t + 1], std[t - k + 1:t + 1],
                                             g, options)
            kept.append(x)
        if callback is not None:
            callback(t, xf, x)
        fa, ff, fc = model.fields(x), model.fields(xf), model.fields(chain) if mda else None
        row = {"analysis_seconds": np.float64(seconds), "observations": obs_values[t]}
        for v in names:
            row[f"{v}_analysis"] = fa[v].cpu().numpy()
            row[f"{v}_forecast_mean"] = ff[v].mean(0).cpu().numpy()
            row[f"{v}_forecast_spread"] = ff[v].std(0).cpu().numpy()
            if mda:
                row[f"{v}_mda_chain"] = fc[v].cpu().numpy()
            if truth is not None:
                row[f"{v}_truth"] = truth_values[v][t]
        if store is None:
            for k, value in row.items():
                template[k][t] = value
        else:
            for k, value in row.items():
                buffer.setdefault(k, []).append(value)
            if (t + 1) % block == 0 or t + 1 == len(steps):
                store.write(range(t + 1 - len(buffer["analysis_seconds"]), t + 1), {k: np.stack(v) for k, v in buffer.items()})
                buffer.clear()
        bar.update(1)
    bar.close()
    return template if store is None else store.finalize()


def truth_and_observations(model, operator, *, n_cycles: int, interval: float, noise_std: float, spinup: float = 0.0,
                           seed: int = 0) -> tuple[xr.Dataset, xr.DataArray, xr.Dataset]:
    """An observing-system simulation: a truth run of ``model`` from a random state spun up for ``spinup``,
    sampled every ``interval`` (``n_cycles`` times after time 0), observed through ``operator`` with
    Gaussian noise ``noise_std`` (seeded by ``seed``).

    Returns ``(initial, observations, truth)``: the truth at time 0 (its fields, no member dim),
    observations ``(time, location)`` and the truth ``(time, *dims)``."""
    every = steps_in(interval, model.dt, "interval", step="model step")
    spin = steps_in(spinup, model.dt, "spinup", step="model step")
    g = member_generator(seed, 2**32 - 1)
    x = model.advance(model.initial_state(1, member_generator(seed, 0)), spin, generator=g)
    traj = model.integrate(x, n_cycles, every, generator=g)[0]  # (T + 1, *state)
    with torch.no_grad():
        y = torch.as_tensor(operator(traj[1:])).to(torch.float64)
    y = y + float(noise_std) * torch.randn(y.shape, generator=member_generator(seed, 1), dtype=torch.float64)
    times = interval * np.arange(1, n_cycles + 1)
    fields, variables = model.fields(traj), model.variables()
    coords = {d: (d, c.values, c.attrs) for d, c in model.coords().items()}
    tcoord = {"time": ("time", times, {"long_name": "analysis time", "units": model.time_units})}
    truth = xr.Dataset({v: (("time", *variables[v].dims), fields[v][1:].cpu().numpy(), variables[v].attrs)
                        for v in variables}, coords={**coords, **tcoord})
    initial = xr.Dataset({v: (variables[v].dims, fields[v][0].cpu().numpy(), variables[v].attrs) for v in variables},
                         coords={**coords, "time": ((), 0.0)})
    obs = xr.DataArray(y.reshape(n_cycles, -1).numpy(), dims=("time", "location"),
                       coords={"time": tcoord["time"], "location": np.arange(y[0].numel())},
                       name="observations", attrs={"long_name": "simulated observations"})
    return initial, obs, truth
