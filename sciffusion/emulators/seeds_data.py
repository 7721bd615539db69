"""Tensors for SEEDS-style emulation: the input checks, the conditioning and the training pairs.

The emulator models one member ``x`` of an ensemble given K seed members ``s_1..s_K`` at lead
time ``t``. To make the learning problem well scaled at every lead, the target is the member's
deviation from the seed mean, divided by the typical size of that deviation at that lead::

    z = (x - mean_k s_k) / d(t),        d(t) = std over training of (member - seed mean) at lead t

and the condition stacks, on the grid, ``(s_k - mean) / d(t)`` for each seed, the normalised
seed mean ``(mean - mu) / sd``, the lead time ``t / max(t)``, optionally the climatology
(``(clim_mean - mu) / sd``, ``clim_std / sd``) and static fields. :class:`SeedsCoder` holds these
constants (JSON-serialisable, stored in the checkpoint) and :class:`SeedPairs` draws the training
pairs: for each (init, lead) sample, random K seeds and a different member as target - or, in
post-processing mode, the truth with probability ``truth_fraction``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from sciffusion.data.batches import BatchDataset
from sciffusion.data.coder import FieldCoder, check_spread, names as _names, numeric_coords
from sciffusion.data.pairs import seed_positions
from sciffusion.data.tensors import CF_ATTRS, dataset_to_tensor

MODES = ("emulation", "post-processing")


def check_finite(t: torch.Tensor, variables: Sequence[str], what: str = "training data", axis: int = 2) -> None:
    """Raise ValueError naming the first variable (channel ``axis`` of ``t``) with NaN or infinite values."""
    for i, v in enumerate(variables):
        bad = int((~torch.isfinite(t.select(axis, i))).sum())
        if bad:
            raise ValueError(f"variable {v!r} has {bad} NaN or infinite value(s) of {t.select(axis, i).numel()} in the "
                             f"{what}; the ensemble emulator needs complete fields: fill them (e.g. ds[{v!r}].fillna(...) "
                             "with a climatology or neighbouring values), or mask them by filling and passing weights= "
                             "that are 0 at those grid points")


def ensemble_tensor(ds: xr.Dataset, variables: Sequence[str], sample_dims: Sequence[str], grid_dims: Sequence[str],
                    member_dim: str | None = "member") -> torch.Tensor:
    """Stack ``variables`` to ``(S, [M,] C, *grid)`` float32 with the sample dims flattened (C order)."""
    members = [member_dim] if member_dim else []
    t = dataset_to_tensor(ds, variables, sample_dims=[*sample_dims, *members], grid_dims=grid_dims)
    return t.reshape(-1, *[ds.sizes[d] for d in members], *t.shape[1:])


def check_seed_members(seed_members, n_seeds: int, size: int, member_dim: str = "member", *,
                       need_target: bool = True) -> list[int]:
    """The K seed positions (default ``range(K)``); ValueError unless K distinct positions in ``[0, size)``
    (and, with ``need_target``, at least one member left as a target)."""
    seeds = seed_positions(seed_members, n_seeds, size, member_dim)
    if need_target and size <= n_seeds:
        raise ValueError(f"the training ensemble has {size} {member_dim!r} entries; need more than K={n_seeds} seeds")
    return seeds


class SeedsCoder(FieldCoder):
    """Constants that turn (seeds, lead) into the model's condition and members into targets.

    Args:
        variables: state variables (channels), grid_dims/grid_sizes/grid_coords: the grid.
        n_seeds: K. lead_dim, lead_times: the lead-time dimension and the trained values.
        center, scale: per-variable climatological mean and std (scalars).
        dev_scale: per-variable list over ``lead_times`` of the deviation scale d(t).
        climatology: ``{"mean": {v: grid list}, "std": {...}}`` or None.
        static: ``{name: grid list}`` of normalised static fields (may be empty).
        attrs: per-variable CF attributes of the training data (units are checked on the seeds).
        weights: grid-point weights of the loss, ``{"dims", "values"}`` (mean 1 over the grid; see
            :mod:`sciffusion.emulators.weights`), or None (unweighted; not written by :meth:`to_dict`).
    """

    KEYS = ("variables", "grid_dims", "grid_sizes", "grid_coords", "n_seeds", "lead_dim", "lead_times", "center",
            "scale", "dev_scale", "climatology", "static", "member_dim", "attrs", "weights")

    def __init__(self, *, variables, grid_dims, grid_sizes, grid_coords, n_seeds, lead_dim, lead_times, center,
                 scale, dev_scale, climatology=None, static=None, member_dim="member", attrs=None, weights=None):
        self.variables, self.grid_dims = list(variables), list(grid_dims)
        self.grid_sizes, self.grid_coords = dict(grid_sizes), dict(grid_coords)
        self.n_seeds, self.lead_dim, self.member_dim = int(n_seeds), str(lead_dim), str(member_dim)
        self.lead_times = [float(t) for t in lead_times]
        self.center, self.scale = dict(center), dict(scale)
        self.dev_scale = {v: [float(x) for x in dev_scale[v]] for v in self.variables}
        self.climatology, self.static, self.attrs = climatology, dict(static or {}), dict(attrs or {})
        self.weights = None if weights is None else {"dims": list(weights["dims"]), "values": weights["values"]}

    def to_dict(self):
        d = super().to_dict()
        if d["weights"] is None:  # unweighted coders (and their checkpoints) stay as they were
            del d["weights"]
        return d

    @classmethod
    def fit(cls, ds: xr.Dataset, variables, *, grid_dims, n_seeds=2, lead_dim="lead_time", member_dim="member",
            climatology=False, static=None, seed_members=None) -> SeedsCoder:
        """Fit the constants on a physics-ensemble Dataset ``v (..., lead, member, *grid)``; d(t) is measured
        around the mean of ``seed_members`` (positions along ``member_dim``; default the first K)."""
        grid_dims = _names(grid_dims)
        seeds = check_seed_members(seed_members, n_seeds, ds.sizes[member_dim], member_dim, need_target=False)
        rest = [m for m in range(ds.sizes[member_dim]) if m not in seeds]
        lead_times = np.atleast_1d(ds[lead_dim].values).astype(float)
        center, scale, dev, clim = {}, {}, {}, ({"mean": {}, "std": {}} if climatology else None)
        for v in variables:
            x = ds[v].astype(np.float64)
            center[v], scale[v] = float(x.mean()), float(x.std())
            check_spread({v: scale[v]}, "emulated")
            seed_mean = x.isel({member_dim: seeds}).mean(member_dim)
            others = x.isel({member_dim: rest})
            d = np.sqrt(((others - seed_mean) ** 2).mean([dim for dim in others.dims if dim != lead_dim]))
            dev[v] = np.maximum(np.atleast_1d(d.values), 1e-6 * scale[v]).tolist()
            if climatology:
                other = [dim for dim in x.dims if dim not in grid_dims]
                clim["mean"][v] = x.mean(other).transpose(*grid_dims).values.tolist()
                clim["std"][v] = x.std(other).transpose(*grid_dims).values.tolist()
        stat = {}
        for name in _names(static) if static else []:
            f = ds[name].astype(np.float64).transpose(*grid_dims)
            stat[name] = ((f - f.mean()) / (f.std() if float(f.std()) > 0 else 1.0)).values.tolist()
        return cls(variables=list(variables), grid_dims=grid_dims, grid_sizes={d: int(ds.sizes[d]) for d in grid_dims},
                   grid_coords=numeric_coords(ds, grid_dims), n_seeds=n_seeds, lead_dim=lead_dim,
                   lead_times=lead_times.tolist(), center=center, scale=scale, dev_scale=dev, climatology=clim,
                   static=stat, member_dim=member_dim,
                   attrs={v: {a: ds[v].attrs[a] for a in CF_ATTRS if a in ds[v].attrs} for v in variables})

    @property
    def cond_channels(self) -> int:
        c = self.channels
        return self.n_seeds * c + c + 1 + (2 * c if self.climatology else 0) + len(self.static)

    # ------------------------------------------------------------------ checks
    role = "seeds"

    def check(self, ds: xr.Dataset, role: str | None = None) -> None:
        """Raise ValueError naming what differs between seed data ``ds`` and the training data."""
        super().check(ds, role)
        if self.member_dim not in ds.dims or ds.sizes[self.member_dim] != self.n_seeds:
            got = ds.sizes.get(self.member_dim, "no")
            raise ValueError(f"the seeds have {got} {self.member_dim!r} entries but the emulator is conditioned on "
                             f"K={self.n_seeds} seed members; select them, e.g. ds.isel({self.member_dim}=slice(0, {self.n_seeds}))")
        if self.lead_dim not in ds.coords:
            raise ValueError(f"the seeds have no {self.lead_dim!r} coordinate; the emulator was trained on lead "
                             f"times {self.lead_times}")
        self.lead_index(ds[self.lead_dim].values)

    def lead_index(self, leads) -> np.ndarray:
        """Index of each lead time in the trained lead times; ValueError naming unknown ones."""
        leads = np.atleast_1d(np.asarray(leads, dtype=float))
        trained = np.asarray(self.lead_times)
        hit = np.abs(leads[:, None] - trained[None, :]) <= 1e-9 * np.maximum(1.0, np.abs(trained))[None, :]
        if not hit.any(1).all():
            bad = sorted(set(leads[~hit.any(1)].tolist()))
            raise ValueError(f"the seeds' lead times {bad} ({self.lead_dim!r}) differ from the training lead times "
                             f"{self.lead_times}; the emulator only knows those")
        return hit.argmax(1)

    # ------------------------------------------------------------------ encode / decode
    def _dev(self, x: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        """The deviation scale d(lead) shaped ``(N, C, 1..)`` to broadcast against ``(N, C, *grid)``."""
        table = torch.tensor([self.dev_scale[v] for v in self.variables], dtype=x.dtype, device=x.device)  # (C, L)
        return table[:, lead.to(x.device)].T.reshape(len(lead), -1, *(1,) * len(self.grid_dims))

    def condition(self, seeds: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        """``seeds (N, K, C, *grid)`` physical, ``lead (N,)`` indices -> condition ``(N, Cc, *grid)``."""
        n = seeds.shape[0]
        mean = seeds.mean(1)
        dev = ((seeds - mean[:, None]) / self._dev(mean, lead)[:, None]).reshape(n, -1, *self.grid_shape)
        parts = [dev, self._affine(mean, self.center, self.scale)]
        kw = {"dtype": seeds.dtype, "device": seeds.device}  # constants where the seeds are (CPU or the GPU)
        t = torch.tensor(self.lead_times, **kw)[lead.to(seeds.device)] / max(max(abs(x) for x in self.lead_times), 1e-12)
        parts.append(t.reshape(n, 1, *(1,) * len(self.grid_dims)).expand(n, 1, *self.grid_shape))
        if self.climatology:
            cm = torch.tensor([self.climatology["mean"][v] for v in self.variables], **kw)
            cs = torch.tensor([self.climatology["std"][v] for v in self.variables], **kw)
            parts += [self._affine(cm[None], self.center, self.scale).expand(n, -1, *self.grid_shape),
                      (cs[None] / self._vec(self.scale, self.variables, cs)).expand(n, -1, *self.grid_shape)]
        if self.static:
            st = torch.tensor([self.static[k] for k in self.static], **kw)
            parts.append(st[None].expand(n, -1, *self.grid_shape))
        return torch.cat(parts, dim=1)

    def encode(self, x: torch.Tensor, seeds: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        """Member ``x (N, C, *grid)`` -> target ``z = (x - seed mean) / d(lead)``."""
        return (x - seeds.mean(1)) / self._dev(x, lead)

    def decode(self, z: torch.Tensor, seeds: torch.Tensor, lead: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode` for ``z (N, B, C, *grid)`` (B members per condition)."""
        return seeds.mean(1)[:, None] + self._dev(seeds[:, 0], lead)[:, None] * z


class SeedPairs(BatchDataset):
    """Training pairs ``{"x": z (C, *grid), "cond": (Cc, *grid)}`` drawn from a physics ensemble.

    Args:
        coder: the fitted :class:`SeedsCoder`.
        members: ``(S, M, C, *grid)`` physical values; ``lead``: ``(S,)`` lead indices.
        truth: ``(S, C, *grid)`` verifying truth (post-processing mode) or None.
        mode: ``"emulation"`` (target: another member) or ``"post-processing"`` (target: the
            truth with probability ``truth_fraction``, else another member).
        pairs_per_sample: items per sample (default ``M - K``); item ``i`` of sample ``s`` has
            fixed random seeds and target drawn once from ``seed`` (so training resumes exactly).
        seed_members: None (default): K random seeds per item, any member in turn (SEEDS; members are
            exchangeable). A list of K positions: always those members as the seeds, e.g. ``[0]`` for
            an unperturbed control run placed first, and the targets the other members in turn.
    """

    def __init__(self, coder: SeedsCoder, members: torch.Tensor, lead: torch.Tensor, *, truth=None,
                 mode: str = "emulation", truth_fraction: float = 0.5, pairs_per_sample: int | None = None, seed: int = 0,
                 seed_members=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "post-processing" and truth is None:
            raise ValueError("post-processing mode needs the truth (a '<variable>_truth' variable or truth=...)")
        if not 0.0 <= truth_fraction <= 1.0:
            raise ValueError(f"truth_fraction must be in [0, 1], got {truth_fraction}")
        s, m = members.shape[:2]
        k = coder.n_seeds
        if m < k + (1 if mode == "emulation" else 0):
            raise ValueError(f"the training ensemble has {m} members; need more than K={k} seeds")
        self.coder, self.members, self.lead, self.truth = coder, members, lead.long(), truth
        p = pairs_per_sample or max(m - k, 1)
        rng = np.random.default_rng(seed)
        if seed_members is None:
            picks = rng.random((s * p, m)).argsort(1)[:, : k + 1]
        else:  # fixed seeds; each sample's targets run over the other members from a random start
            fixed = check_seed_members(seed_members, k, m)
            rest = np.array([j for j in range(m) if j not in fixed])
            turn = (np.arange(p)[None] + rng.integers(0, len(rest), (s, 1))) % len(rest)  # (S, P)
            picks = np.concatenate([np.tile(fixed, (s * p, 1)), rest[turn].reshape(-1, 1)], 1)
        self.sample = np.repeat(np.arange(s), p)
        self.seeds = torch.from_numpy(picks[:, :k].copy())
        target = picks[:, k].copy()
        if mode == "post-processing":
            target[rng.random(s * p) < truth_fraction] = -1
        self.target = torch.from_numpy(target)
        self.sample_t = torch.from_numpy(self.sample)
        self.mask = None  # the loss's per-point weights (edm_loss's mask term), built once
        if coder.weights is not None:
            from sciffusion.emulators.weights import grid_tensor

            self.mask = grid_tensor(coder.weights, coder.grid_dims, coder.grid_sizes)

    def __len__(self) -> int:
        return len(self.sample)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.sample_t[idx]
        seeds = self.members[s[:, None], self.seeds[idx]]  # (B, K, C, *grid)
        tgt = self.target[idx]
        x = self.members[s, tgt.clamp_min(0)]
        if self.truth is not None:
            x = torch.where((tgt < 0).reshape(-1, *(1,) * (x.ndim - 1)), self.truth[s], x)
        lead = self.lead[s]
        out = {"x": self.coder.encode(x, seeds, lead), "cond": self.coder.condition(seeds, lead)}
        if self.mask is not None:
            out["mask"] = self.mask.expand(len(idx), 1, *self.coder.grid_shape)
        return out
