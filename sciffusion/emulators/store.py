"""The ensemble form of :class:`~sciffusion.data.store.BlockStore`: blocks of members."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping

import numpy as np
import xarray as xr

from sciffusion._deprecate import renamed_keywords
from sciffusion.data.store import BlockStore


class EnsembleStore(BlockStore):
    """Pre-allocated zarr store for an ensemble ``(*dims_before, member, *grid)``, written and resumed
    ``member_chunk`` members at a time (see :class:`~sciffusion.data.store.BlockStore`).

    Args:
        path: the zarr directory.
        template: Dataset with the output variables on the dims *without* ``member``.
        n_members: ensemble size M (member ids ``0..M-1``: member k is the same draw whatever M).
        member_chunk: members per block.
        member_axis: where ``member`` goes in each variable's dims (default: first).
        attrs, mode, always_missing: as :class:`~sciffusion.data.store.BlockStore`.
    """

    @renamed_keywords(members="n_members")
    def __init__(self, path: str | os.PathLike, template: xr.Dataset, n_members: int, *, member_chunk: int = 8,
                 member_axis: int = 0, attrs: Mapping | None = None, mode: str = "w-",
                 always_missing: Mapping[Hashable, np.ndarray] | None = None):
        self.members = int(n_members)
        data_vars = {}
        for name, v in template.data_vars.items():
            dims = list(v.dims)
            dims.insert(member_axis, "member")
            shape = [self.members if d == "member" else template.sizes[d] for d in dims]
            data_vars[name] = (dims, np.broadcast_to(np.zeros((), v.dtype), shape), dict(v.attrs))
        full = xr.Dataset(data_vars, coords=template.coords, attrs=template.attrs).assign_coords(
            member=("member", np.arange(self.members), {"long_name": "ensemble member", "description":
                    "stable id: member k is the same draw whatever the ensemble size"}))
        super().__init__(path, full, dim="member", block=member_chunk, attrs=attrs, mode=mode,
                         always_missing=always_missing)

    @property
    def member_chunk(self) -> int:
        return self.block


def ensemble_output(out: str | os.PathLike | None, template: xr.Dataset, n_members: int,
                    draw: Callable[[range], np.ndarray], *, member_axis: int, attrs: Mapping,
                    member_dim: str = "member", member_attrs: Mapping | None = None, **store_options) -> xr.Dataset:
    """Members ``0..n_members-1`` of ``template``'s variables (its dims, attributes, coordinates and global
    attributes, with ``attrs`` added and ``member_dim`` inserted at ``member_axis``) drawn by ``draw(members)``:
    an array with the members at ``member_axis`` and the variables, in ``template``'s order, on the next axis.
    With ``out`` None all members are drawn at once and returned in memory; otherwise they are written block
    by block to the :class:`EnsembleStore` at ``out`` (``store_options``: ``member_chunk``, ``mode``,
    ``always_missing``), which a rerun with ``mode="resume"`` completes."""
    names = list(template.data_vars)
    dims = {v: (*template[v].dims[:member_axis], member_dim, *template[v].dims[member_axis:]) for v in names}

    def variable(x: np.ndarray, k: int) -> np.ndarray:  # a view, not np.take's copy of the whole ensemble
        return x[(slice(None),) * (member_axis + 1) + (k,)]

    if out is not None:
        store = EnsembleStore(out, template, n_members, member_axis=member_axis, attrs=attrs, **store_options)
        for block in store.missing():
            x = draw(block)
            store.write(block, {v: variable(x, k) for k, v in enumerate(names)}, dims)
        return store.finalize()
    x = draw(range(n_members))
    ds = xr.Dataset({v: (dims[v], variable(x, k), template[v].attrs) for k, v in enumerate(names)},
                    coords=template.coords, attrs={**template.attrs, **attrs})
    return ds.assign_coords({member_dim: xr.Variable(member_dim, np.arange(n_members), member_attrs or {})})
