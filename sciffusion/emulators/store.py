"""The ensemble form of :class:`~sciffusion.data.store.BlockStore`: blocks of members."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

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
