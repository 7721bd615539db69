"""Shared machinery of the rollout emulators (:class:`~sciffusion.emulators.Rollout`, :class:`~sciffusion.emulators.DYffusion`).

- :class:`~sciffusion.emulators.rollout_data.RolloutCoder` (re-exported here): the tensors;
- :class:`RolloutModel`: the rollout loop shared by both models (xarray in, xarray out, per
  ``(member, step)`` seeds, forcing look-up, NaN detection, resume).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from sciffusion.data.store import BlockStore
from sciffusion.diffusion.streams import member_generators
from sciffusion.emulators.base import Emulator
from sciffusion.emulators.rollout_data import RolloutCoder, _names  # noqa: F401  (re-exported)

GROWTH_WARNING = 10.0  # warn when a state's RMS about the training mean exceeds this many times its reference scale


def _rms(coder: RolloutCoder, x: torch.Tensor) -> torch.Tensor:
    """Largest RMS over members of physical states ``x (M, C, *grid)`` about the training mean: ``(C,)``."""
    return (x - coder._vec(coder.mean, coder.variables, x)).pow(2).flatten(2).mean(2).sqrt().amax(0)


def _warn_growth(coder: RolloutCoder, x: torch.Tensor, scale: torch.Tensor, step: int, when) -> bool:
    """One ``RuntimeWarning`` if a variable of ``x`` has grown past ``GROWTH_WARNING`` times ``scale`` (the
    larger of the training std and the initial state's RMS, ``(C,)``); True once warned."""
    ratio = _rms(coder, x) / scale
    if not (ratio > GROWTH_WARNING).any():
        return False
    i = int(ratio.argmax())
    v = coder.variables[i]
    warnings.warn(f"the rollout of {v!r} is blowing up: at step {step} ({coder.time_dim} = {when}) its RMS about the "
                  f"training mean is {float(ratio[i] * scale[i]):.3g}, {float(ratio[i]):.0f}x its reference "
                  f"{float(scale[i]):.3g} (the larger of the training data's std, {coder.std[v]:.3g}, and the initial "
                  "state's RMS). The emulator has most likely left the attractor: train it longer or sample with more "
                  "sampler steps (warned once per rollout; a NaN or inf state raises FloatingPointError)",
                  RuntimeWarning, stacklevel=4)  # the caller of rollout(), past torch.no_grad's wrapper
    return True


def _sha(arr) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16] if arr is not None else ""


class RolloutModel(Emulator):
    """The rollout loop. Subclasses set ``self.coder``, ``self.sampler`` and implement
    ``_advance(hist, k, forcing, generators, settings) -> list of next states`` (one for an
    autoregressive step, up to ``unit`` for DYffusion) on physical tensors ``(M, C, *grid)``."""

    unit = 1
    emulator = "sciffusion.emulators.RolloutModel"

    def _initial(self, initial, n_members: int) -> tuple[np.ndarray, Any]:
        """``(M or 1, history, C, *grid)`` physical states and the time of the last one."""
        c = self.coder
        ds = initial.to_dataset() if isinstance(initial, xr.DataArray) else initial
        c.check(ds)
        t0 = None
        if c.time_dim in ds[c.variables[0]].dims:
            if ds.sizes[c.time_dim] < c.history:
                raise ValueError(f"the initial state needs {c.history} times along {c.time_dim!r} (history), "
                                 f"got {ds.sizes[c.time_dim]}")
            ds = ds.isel({c.time_dim: slice(-c.history, None)})
            if c.time_dim in ds.coords:
                t0 = ds[c.time_dim].values[-1]
        elif c.history > 1:
            raise ValueError(f"the model uses history={c.history} states: give the initial state a {c.time_dim!r} dimension")
        elif c.time_dim in ds.coords:
            t0 = ds[c.time_dim].values
        lead = ["member"] if "member" in ds[c.variables[0]].dims else []
        extra = [d for d in ds[c.variables[0]].dims if d not in (*c.grid_dims, c.time_dim, *lead)]
        if extra:
            raise ValueError(f"the initial state has extra dimension(s) {extra}; select one state (e.g. .isel({extra[0]}=0))")
        arrs = [ds[v] if c.time_dim in ds[v].dims else ds[v].expand_dims(c.time_dim) for v in c.variables]
        x = np.stack([a.transpose(*lead, c.time_dim, *c.grid_dims).values for a in arrs], axis=len(lead) + 1)
        if not lead:
            x = x[None]
        elif x.shape[0] != n_members:
            raise ValueError(f"the initial state has {x.shape[0]} members, not n_members={n_members}")
        if not np.isfinite(x).all():
            raise ValueError("the initial state contains NaN or inf")
        if t0 is None:
            t0 = np.datetime64("1970-01-01", "ns") if c.time_kind == "datetime" else 0.0
        return x, t0

    @torch.no_grad()
    def rollout(self, initial: xr.Dataset | xr.DataArray, n_steps: int, *, n_members: int = 1,
                forcings: xr.Dataset | None = None, steps: int | None = None, method: str | None = None, seed: int = 0,
                out: str | os.PathLike | None = None, chunk_steps: int = 100, mode: str = "w-", progress: bool = True,
                device=None, dtype: torch.dtype = torch.float32, **sampler_options) -> xr.Dataset:
        """Roll the whole ensemble forward ``n_steps`` steps of ``dt`` from ``initial``.

        Args:
            initial: the trained variables on ``(*grid)`` (or ``(time, *grid)`` with at least
                ``history`` times; or with a ``member`` dim of size ``n_members``). Its time
                coordinate (default 0) is the output's first time.
            n_steps: steps of the training time step ``dt``; the output has ``n_steps + 1`` times.
            n_members: ensemble size; member ``m`` at step ``k`` draws its noise from the stream
                ``(seed, k, m)``, so it is the same whatever ``n_members`` and after a resume.
            forcings: Dataset with the forcing variables along ``time`` covering the times of the
                conditioning states ``t0 .. t0 + (n_steps - 1) dt``.
            steps, method, **sampler_options: sampler settings (default ``self.sampler``).
            out: zarr path streamed to every ``chunk_steps`` times; ``mode="resume"`` continues
                an interrupted run from its last written time (the result equals an
                uninterrupted run bit for bit), ``"w"`` overwrites, ``"w-"`` refuses an existing store.
            dtype: dtype of the states (and of the store).
        Returns:
            Dataset ``v (member, time, *grid)``, grid coordinates and CF attributes of the training
            data, provenance in ``attrs``.
        Raises:
            FloatingPointError: a state became NaN or inf (the message names the step and the members).
        """
        c, n_steps, n_members = self.coder, int(n_steps), int(n_members)
        if n_steps < 1 or n_members < 1:
            raise ValueError(f"n_steps and n_members must be >= 1, got {n_steps} and {n_members}")
        x0, t0 = self._initial(initial, n_members)
        times = c.times(t0, n_steps + 1)
        forcing = c.forcing_at(forcings, times[:-1])
        settings = {**self.sampler, **{k: v for k, v in {"steps": steps, "method": method}.items() if v is not None},
                    **sampler_options}
        prov = self.provenance(f"rollout(n_steps={n_steps}, n_members={n_members}, seed={seed})",
                               sampler=json.dumps(settings, sort_keys=True), seed=int(seed), n_members=n_members,
                               n_steps=n_steps, dt=str(c.dt), initial_sha256=_sha(x0), forcings_sha256=_sha(forcing))
        dims = ["member", c.time_dim, *c.grid_dims]
        coords = {c.time_dim: xr.Variable(c.time_dim, times, c.time_attrs), "member": np.arange(n_members),
                  **c.grid}
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        shape = (n_members, n_steps + 1, *c.grid_shape)
        store, done = None, 0
        if out is not None:
            template = xr.Dataset({v: (dims, np.empty(shape, np_dtype), c.attrs.get(v, {})) for v in c.variables}, coords=coords)
            store = BlockStore(out, template, dim=c.time_dim, block=chunk_steps, attrs=prov, mode=mode)
            done = store.written()
            if done and not np.array_equal(store.read([0])[c.variables[0]][:, 0],
                                           np.broadcast_to(x0[:, -1, 0], (n_members, *c.grid_shape)).astype(np_dtype)):
                raise ValueError(f"cannot resume {os.fspath(out)!r}: it starts from another initial state")
            chunk = store.block
        else:
            full = np.empty((n_members, n_steps + 1, c.channels, *c.grid_shape), np_dtype)
        seq = torch.as_tensor(x0, dtype=dtype).expand(n_members, *x0.shape[1:]).clone()  # (M, history, C, *grid)
        start = 0 if done == 0 else ((done - 1) // self.unit) * self.unit
        if start > 0:  # rebuild the history from the store (and the initial states before time 0)
            idx = list(range(start - c.history + 1, start + 1))
            got = store.read([i for i in idx if i >= 0])
            stored = torch.as_tensor(np.stack([got[v] for v in c.variables], axis=2))
            seq = torch.cat([seq[:, : max(0, -idx[0])], stored], dim=1)[:, -c.history:]
        buffer: list[torch.Tensor] = [] if done else [seq[:, -1]]
        k = start if done < n_steps + 1 else n_steps
        bar = tqdm(total=n_steps, initial=start, disable=not progress, desc="rollout", leave=False)
        scale = torch.tensor([c.std[v] for v in c.variables]).maximum(_rms(c, torch.as_tensor(x0[:, -1])).float())
        warned = False
        while k < n_steps:
            gens = member_generators(seed, n_members, torch.device(device or "cpu"), key=(k,))
            f = None if forcing is None else torch.as_tensor(forcing[k], dtype=dtype).expand(n_members, *forcing.shape[1:])
            new = self._advance(seq.to(device), k, None if f is None else f.to(device), gens, settings)
            for j, x in enumerate(new[: n_steps - k]):
                x = x.to("cpu", dtype)
                bad = ~torch.isfinite(x.flatten(1)).all(1)
                if bad.any():
                    raise FloatingPointError(f"the rollout became non-finite at step {k + j + 1} ({c.time_dim} = "
                                             f"{times[k + j + 1]}) in member(s) {bad.nonzero().flatten().tolist()}; "
                                             f"times before {done if store is not None else k + j + 1} are kept")
                warned = warned or _warn_growth(c, x, scale, k + j + 1, times[k + j + 1])
                seq = torch.cat([seq[:, 1:], x[:, None]], dim=1)
                if k + j + 1 >= done:
                    buffer.append(x)
            k = min(k + len(new), n_steps)
            bar.update(min(len(new), n_steps - bar.n))
            while store is not None and buffer and (len(buffer) >= chunk - done % chunk or done + len(buffer) == n_steps + 1):
                n = min(len(buffer), chunk - done % chunk)
                block = torch.stack(buffer[:n], 1).numpy()  # (M, n, C, *grid)
                store.write(range(done, done + n), {v: block[:, :, i] for i, v in enumerate(c.variables)})
                buffer, done = buffer[n:], done + n
            if store is None and buffer:
                full[:, done : done + len(buffer)] = torch.stack(buffer, 1).numpy()
                done, buffer = done + len(buffer), []
        bar.close()
        if store is not None:
            return store.finalize()
        return xr.Dataset({v: (dims, full[:, :, i], c.attrs.get(v, {})) for i, v in enumerate(c.variables)},
                          coords=coords, attrs=prov)
