"""A zarr ensemble store written block by block along ``member`` and resumable after a crash."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from sciffusion.data.provenance import add_to_record, check_provenance, read_record

_DONE = "sciffusion_completed_members"


class EnsembleStore:
    """Pre-allocated zarr store for an ensemble ``(*dims_before, member, *grid)``.

    The store is created with every value NaN and chunks that keep ``member_chunk`` members
    together; :meth:`write` fills whole member blocks (``region`` writes) and records them in
    the store's attributes only after the data is written, so after a crash :meth:`missing`
    lists exactly the blocks still to do.

    Args:
        path: the zarr directory.
        template: Dataset with the output variables on the dims *without* ``member`` (values are
            ignored; coordinates and attributes are copied).
        members: ensemble size M (ids ``0..M-1``).
        member_chunk: members per block (= zarr chunk along ``member``).
        member_axis: where to insert ``member`` in each variable's dims (default: first).
        attrs: global attributes to add (provenance).
        mode: ``"w-"`` (fail if it exists), ``"w"`` (overwrite) or ``"resume"`` (continue an
            existing store, checking its shape matches and, with :func:`check_provenance`, that it
            was written with the same ``attrs``; nothing is written when they differ).
        always_missing: per variable, a boolean array over the variable's trailing (grid) dims
            marking points that have no data at all (land in an SST field); :meth:`write` leaves
            them NaN whatever the model produced there.
    """

    def __init__(self, path: str | os.PathLike, template: xr.Dataset, members: int, *, member_chunk: int = 8,
                 member_axis: int = 0, attrs: Mapping | None = None, mode: str = "w-",
                 always_missing: Mapping[Hashable, np.ndarray] | None = None):
        self.path = Path(path)
        self.always_missing = {k: np.asarray(v, dtype=bool) for k, v in (always_missing or {}).items()}
        self.members, self.member_chunk = int(members), int(member_chunk)
        if mode not in ("w-", "w", "resume"):
            raise ValueError(f"mode must be 'w-', 'w' or 'resume', got {mode!r}")
        if mode == "resume" and self.path.exists():
            self._check_existing(template, attrs or {})
            return
        if self.path.exists():
            if mode == "w-":
                raise FileExistsError(f"{self.path} exists; pass mode='w' (--overwrite) to replace it "
                                      "or mode='resume' (--resume) to continue it")
            shutil.rmtree(self.path)
        data_vars = {}
        for name, v in template.data_vars.items():
            dims = list(v.dims)
            dims.insert(member_axis, "member")
            shape = [self.members if d == "member" else template.sizes[d] for d in dims]
            chunks = [self.member_chunk if d == "member" else s for d, s in zip(dims, shape)]
            data = da.full(shape, np.nan, dtype=v.dtype if v.dtype.kind == "f" else np.float32, chunks=chunks)
            data_vars[name] = (dims, data, dict(v.attrs))
        ds = xr.Dataset(data_vars, coords=template.coords, attrs={**template.attrs, **(attrs or {})})
        ds = ds.assign_coords(member=np.arange(self.members))
        ds["member"].attrs.update(long_name="ensemble member", description="stable id: member k is the same draw whatever the ensemble size")
        ds.attrs[_DONE] = "[]"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            ds.to_zarr(self.path, mode="w", compute=False, consolidated=False)

    def _check_existing(self, template: xr.Dataset, attrs: Mapping) -> None:
        ds = xr.open_zarr(self.path, consolidated=False)
        check_provenance(ds.attrs, attrs, self.path)
        if ds.sizes.get("member") != self.members:
            raise ValueError(f"{self.path} holds {ds.sizes.get('member')} members, not {self.members}; "
                             "resume with the same ensemble size or use --overwrite (mode='w')")
        for name, v in template.data_vars.items():
            if name not in ds:
                raise ValueError(f"{self.path} has no variable {name!r}; it was written for another model")
            for d in v.dims:
                if ds.sizes.get(d) != template.sizes[d]:
                    raise ValueError(f"{self.path}: dimension {d!r} has size {ds.sizes.get(d)}, expected {template.sizes[d]}")
        chunks = ds[next(iter(template.data_vars))].encoding.get("chunks") or ()
        dims = ds[next(iter(template.data_vars))].dims
        if chunks and chunks[dims.index("member")] != self.member_chunk:
            self.member_chunk = chunks[dims.index("member")]

    def completed(self) -> set[int]:
        return set(read_record(self.path, _DONE) or [])

    def blocks(self) -> list[range]:
        return [range(a, min(a + self.member_chunk, self.members)) for a in range(0, self.members, self.member_chunk)]

    def missing(self) -> list[range]:
        """Member blocks not yet written."""
        done = self.completed()
        return [b for b in self.blocks() if b.start not in done]

    def write(self, block: range, data: Mapping[Hashable, np.ndarray], dims: Mapping[Hashable, Sequence[Hashable]]) -> None:
        """Write member block ``block`` (aligned to ``member_chunk``) and mark it complete.

        ``data[name]`` holds the block's values with dims ``dims[name]`` (which include ``member``).
        """
        if block.start % self.member_chunk or (block.stop != self.members and len(block) != self.member_chunk):
            raise ValueError(f"member block {block} is not aligned to chunks of {self.member_chunk}")
        arrays = {}
        for k, v in data.items():
            v = np.asarray(v)
            if k in self.always_missing and self.always_missing[k].any():
                v = np.where(self.always_missing[k], np.nan, v).astype(v.dtype)
            arrays[k] = v
        ds = xr.Dataset({k: (list(dims[k]), arrays[k]) for k in data})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            ds.to_zarr(self.path, region={"member": slice(block.start, block.stop)}, consolidated=False)
        add_to_record(self.path, _DONE, block.start)

    def finalize(self) -> None:
        """Consolidate the metadata once every block is written, so ``xr.open_zarr(path)`` is quiet and fast."""
        if self.missing():
            raise ValueError(f"{self.path} still misses member blocks {self.missing()}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            zarr.consolidate_metadata(str(self.path))

    def open(self) -> xr.Dataset:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            return xr.open_zarr(self.path)
