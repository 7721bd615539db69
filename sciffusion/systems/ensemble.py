"""Truth runs and perturbed-initial-condition ensembles for every system, as xarray or zarr.

:func:`simulate` is the one entry point. For a time-dependent system it

1. spins a single truth trajectory up from a random state (``spinup`` time units),
2. takes ``n_init`` initial states along that truth, ``init_interval`` apart,
3. for each initial state runs ``n_members`` forecasts from ``truth + perturbation`` (member
   ``m`` of init ``i`` seeded by ``(seed, i, m)``: stable whatever the ensemble size), with the
   truth system or an imperfect ``forecast_system``, and the truth itself, for ``n_leads``
   leads ``lead_interval`` apart,

and returns a Dataset with, per output field ``v``, ``v (init_time, lead_time, member, ...)``
and ``v_truth (init_time, lead_time, ...)``, plus ``valid_time = init_time + lead_time``.
A stationary system (Darcy) gives ``a, u (member, y, x)`` instead.

With ``out=`` the Dataset streams to a :class:`~sciffusion.data.store.BlockStore`, one chunk at
a time (one init time, or ``chunk_members`` samples; the ``member`` dimension of a chunk is whole);
a rerun with ``mode="resume"`` skips the chunks written, after checking the run's settings
(``attrs["sciffusion_config"]``) against the store's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciffusion._deprecate import renamed_keywords
from sciffusion.systems.base import System, check_positive, check_positive_int, member_generator, steps_in

# the values of the deprecated if_exists= keyword, as mode= values
IF_EXISTS = {"error": "w-", "overwrite": "w", "resume": "resume"}
_TRUTH_KEY = 2**32 - 1  # seed key of the truth noise (stochastic truth systems), never a member id


def _global_attrs(system: Any, config: dict[str, Any]) -> dict[str, Any]:
    from sciffusion import __version__

    return {
        "Conventions": "CF-1.8",
        "title": f"sciffusion {system.name} simulation",
        "source": f"sciffusion {__version__} sciffusion.systems.{type(system).__name__}",
        "system": system.name,
        "time_note": getattr(system, "time_note", ""),
        "sciffusion_config": json.dumps(config, sort_keys=True),
    }


def _fill(template: xr.Dataset, dim: str, block: int, compute: Callable[[int, Callable[[str], None]], dict],
          out, mode: str, progress: bool, on_chunk: Callable[[int], None] | None) -> xr.Dataset:
    """Fill ``template`` block by block along ``dim``, in memory or streamed to the resumable store ``out``.

    ``compute(c, note)`` returns block ``c``'s values and may call ``note(text)`` to show where it is."""
    from tqdm.auto import tqdm

    from sciffusion.data.store import BlockStore

    store = None if out is None else BlockStore(out, template, dim=dim, block=block, mode=mode,
                                                provenance={"sciffusion_config": template.attrs["sciffusion_config"]})
    if store is None:  # dask may share one buffer between equal-shaped placeholders: give each its own
        template = template.load()
        template = template.assign({k: template[k].copy(deep=True) for k in template.data_vars})
    blocks = [range(a, min(a + block, template.sizes[dim])) for a in range(0, template.sizes[dim], block)]
    todo = blocks if store is None else store.missing()
    bar = tqdm(total=len(blocks), initial=len(blocks) - len(todo), desc=f"{template.attrs.get('system', '')} ensemble",
               unit="chunk", disable=not progress)
    for b in todo:
        values = compute(b.start // block, bar.set_postfix_str)
        if store is None:
            for k, v in values.items():
                template[k][{dim: slice(b.start, b.stop)}] = v
        else:
            store.write(b, values)
        bar.update(1)
        if on_chunk is not None:
            on_chunk(b.start // block)
    bar.close()
    return template if store is None else store.finalize()


def _empty(shape: tuple[int, ...], chunks: tuple[int, ...], dtype=np.float64, fill=np.nan):
    import dask.array as da  # lazily: only the store-backed templates need dask

    return da.full(shape, fill, chunks=chunks, dtype=dtype)


@renamed_keywords(members="n_members", store="out", if_exists=("mode", IF_EXISTS))
def simulate(
    system: Any,
    *,
    n_members: int = 8,
    n_init: int = 1,
    n_leads: int = 10,
    lead_interval: float | None = None,
    init_interval: float | None = None,
    spinup: float | None = None,
    perturbation: float | None = None,
    forecast_system: System | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    mode: str = "w-",
    chunk_members: int = 64,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Truth runs and perturbed ensembles of ``system`` (see the module docstring).

    Args:
        system: a :class:`~sciffusion.systems.base.System` or :class:`~sciffusion.systems.DarcyFlow`.
        n_members: ensemble size (Darcy: number of (a, u) samples).
        n_init, n_leads: number of initial times and of leads after lead 0.
        lead_interval, init_interval, spinup: in the system's time units, multiples of
            ``system.dt``; defaults from ``system.default_intervals`` (or ``10 dt``, ``n_leads *
            lead_interval``, ``200 dt``).
        perturbation: initial-condition perturbation scale (``system.perturb``); default
            ``system.default_perturbation``.
        forecast_system: the model that runs the members (default ``system``): pass an
            imperfect model for forecast-vs-truth experiments. It must use the same state layout
            and output fields as ``system`` (its step ``dt`` may differ).
        seed: master seed; the truth uses ``(seed,)`` and member ``m`` of init ``i`` ``(seed, i, m)``.
        out: zarr path to stream to; ``None`` keeps everything in memory.
        mode: ``"w-"`` (refuse an existing ``out``), ``"resume"`` (skip finished chunks) or ``"w"``
            (overwrite). Deprecated aliases, for one release: ``members=`` (``n_members``),
            ``store=`` (``out``), ``if_exists="error"/"resume"/"overwrite"`` (``mode="w-"/"resume"/"w"``).
        chunk_members: samples per chunk for stationary systems.
        progress: show tqdm progress bars: the truth's spin-up and initial states (in steps), then
            the chunks (with the lead reached within the current one).
        on_chunk: called with the chunk index after each chunk is written.
    """
    members, store = check_positive_int(n_members, "n_members"), out
    if getattr(system, "stationary", False):
        return _simulate_stationary(system, members, seed, store, mode, check_positive_int(chunk_members, "chunk_members"), progress, on_chunk)
    n_init, n_leads = check_positive_int(n_init, "n_init"), int(n_leads)
    if n_leads < 0:
        raise ValueError(f"n_leads must be >= 0, got {n_leads}")
    defaults = getattr(system, "default_intervals", {})
    lead_interval = defaults.get("lead_interval", 10 * system.dt) if lead_interval is None else lead_interval
    check_positive(lead_interval, "lead_interval")
    init_interval = max(n_leads, 1) * lead_interval if init_interval is None else init_interval
    spinup = defaults.get("spinup", 200 * system.dt) if spinup is None else spinup
    perturbation = getattr(system, "default_perturbation", 0.01) if perturbation is None else float(perturbation)
    model = system if forecast_system is None else forecast_system
    lead_steps = steps_in(lead_interval, model.dt, "lead_interval")
    if not math.isclose(steps_in(lead_interval, system.dt, "lead_interval") * system.dt, lead_steps * model.dt):
        raise ValueError("lead_interval must be a multiple of both system.dt and forecast_system.dt")
    init_steps, spin_steps = steps_in(init_interval, system.dt, "init_interval"), steps_in(spinup, system.dt, "spinup")
    truth_lead_steps = steps_in(lead_interval, system.dt, "lead_interval")

    config = {"system": system.name, "params": system.params(), "members": members, "n_init": n_init,
              "n_leads": n_leads, "lead_interval": lead_interval, "init_interval": init_interval, "spinup": spinup,
              "perturbation": perturbation, "seed": int(seed),
              "forecast_params": None if forecast_system is None else forecast_system.params()}
    if mode not in ("w-", "w", "resume"):
        raise ValueError(f"mode must be 'w-', 'w' or 'resume', got {mode!r}")
    inits = _truth_states(system, n_init, spin_steps, init_steps, seed, progress)

    variables, coords = system.variables(), system.coords()
    nl = n_leads + 1
    init_times = np.arange(n_init) * float(init_interval)
    lead_times = np.arange(nl) * float(lead_interval)
    tattrs = {"units": system.time_units}
    ds_coords = {
        "init_time": xr.Variable("init_time", init_times, {"long_name": "initial time after spin-up", "standard_name": "forecast_reference_time", **tattrs}),
        "lead_time": xr.Variable("lead_time", lead_times, {"long_name": "lead time", "standard_name": "forecast_period", **tattrs}),
        "member": xr.Variable("member", np.arange(members), {"long_name": "ensemble member id"}),
        "valid_time": xr.Variable(("init_time", "lead_time"), init_times[:, None] + lead_times[None, :], {"long_name": "valid time", "standard_name": "time", **tattrs}),
    }
    for name, c in coords.items():
        ds_coords[name] = xr.Variable(name, c.values, c.attrs)
    data = {}
    for name, var in variables.items():
        shp = tuple(len(coords[d].values) for d in var.dims)
        data[name] = (("init_time", "lead_time", "member", *var.dims), _empty((n_init, nl, members, *shp), (1, nl, members, *shp)), var.attrs)
        data[f"{name}_truth"] = (("init_time", "lead_time", *var.dims), _empty((n_init, nl, *shp), (1, nl, *shp)),
                                 {**var.attrs, "long_name": f"truth {var.attrs.get('long_name', name)}"})
    template = xr.Dataset(data, coords=ds_coords, attrs={**_global_attrs(system, config), "featureType": "ensemble forecast"})

    def compute(i: int, note: Callable[[str], None]) -> dict[str, np.ndarray]:
        gens = [member_generator(seed, i, m) for m in range(members)]
        x0 = inits[i].expand(members, *inits[i].shape[1:])
        ens = torch.cat([model.perturb(x0[m : m + 1], gens[m], perturbation) for m in range(members)])
        noise = gens if getattr(model, "noise_std", 0) else None
        traj = model.integrate(ens, n_leads, lead_steps, generator=noise,
                               callback=lambda k: note(f"members lead {k}/{n_leads}"))  # (M, L, *state)
        truth = system.integrate(inits[i], n_leads, truth_lead_steps, generator=member_generator(seed, i, _TRUTH_KEY),
                                 callback=lambda k: note(f"truth lead {k}/{n_leads}"))
        out = {name: field.transpose(0, 1).unsqueeze(0).cpu().numpy() for name, field in _fields(model, traj).items()}
        return out | {f"{name}_truth": field.cpu().numpy() for name, field in _fields(system, truth).items()}  # (1, L, [M,] ...)

    return _fill(template, "init_time", 1, compute, store, mode, progress, on_chunk)


def _truth_states(system: Any, n_init: int, spin_steps: int, init_steps: int, seed: int, progress: bool) -> list[torch.Tensor]:
    """The truth's initial states: a random state spun up ``spin_steps``, then ``init_steps`` apart
    (one sequential run, behind a progress bar in steps)."""
    from tqdm.auto import tqdm

    g = member_generator(seed)
    x = system.initial_state(1, g)
    inits = []
    with tqdm(total=spin_steps + (n_init - 1) * init_steps, desc=f"{system.name} spin-up", unit="step",
              disable=not progress) as bar:
        for k in range(n_init):
            x = system.advance(x, init_steps if k else spin_steps, generator=g, callback=bar.update)
            inits.append(x)
            bar.set_description(f"{system.name} initial states")
    return inits


def _fields(system: Any, traj: torch.Tensor) -> dict[str, torch.Tensor]:
    """Apply ``system.fields`` to a trajectory ``(B, L, *state)`` -> ``{name: (B, L, ...)}``."""
    b, nl = traj.shape[:2]
    flat = system.fields(traj.reshape(b * nl, *traj.shape[2:]))
    return {k: v.reshape(b, nl, *v.shape[1:]) for k, v in flat.items()}


def _simulate_stationary(system, members, seed, store, mode, chunk, progress, on_chunk) -> xr.Dataset:
    config = {"system": system.name, "params": system.params(), "members": members, "seed": int(seed), "chunk_members": chunk}
    base = system.to_dataset(np.zeros((1, system.n, system.n)), np.zeros((1, system.n, system.n)))
    n = system.n
    data = {k: (v.dims, _empty((members, n, n), (chunk, n, n)), v.attrs) for k, v in base.data_vars.items()}
    coords = {k: v.variable for k, v in base.coords.items() if k != "member"}
    coords["member"] = xr.Variable("member", np.arange(members), base["member"].attrs)
    template = xr.Dataset(data, coords=coords, attrs={**_global_attrs(system, config), "featureType": "sample"})

    def compute(c: int, note: Callable[[str], None]) -> dict[str, np.ndarray]:
        start = c * chunk
        a, u = system.sample(min(chunk, members - start), seed=seed, start=start)
        return {"a": a, "u": u}

    return _fill(template, "member", chunk, compute, store, mode, progress, on_chunk)
