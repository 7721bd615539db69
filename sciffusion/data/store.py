"""One resumable zarr store for every writer: ``systems.simulate`` (blocks of initial times or
samples), ensembles (``generate``, ``Downscaler.downscale``, ``sciffusion sample``, the dask tiles:
blocks of members) and rollouts (blocks of times).

The store is pre-allocated with NaN and chunked so that one block is one zarr chunk along ``dim``;
:meth:`BlockStore.write` fills a block and only then adds its first index to the completion record
(attribute :data:`RECORD`), so after a crash :meth:`BlockStore.missing` lists exactly the blocks
still to do. A store opened with ``mode="resume"`` is first checked: its provenance record
(:func:`~sciffusion.data.provenance.check_provenance`) and every variable's shape must be this run's.
Once complete, :meth:`BlockStore.finalize` drops the record and consolidates the metadata.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from sciffusion.data.io import quiet_consolidated
from sciffusion.data.provenance import add_to_record, check_provenance

RECORD = "sciffusion_completed_blocks"  # JSON list of the first index of every block written
# the completion records of stores written by sciffusion 0.x before this store, read for one release:
# block starts, chunk numbers, the count of leading times written, and the oldest per-chunk flag variable
_OLD_RECORDS = ("sciffusion_completed_members", "sciffusion_completed_chunks", "sciffusion_completed_times")
_OLD_FLAGS = "chunk_done"
_QUIET = ".*[Cc]onsolidated metadata.*"


class BlockStore:
    """Zarr store of ``template``'s variables, written and resumed in blocks of ``block`` along ``dim``.

    Args:
        path: the zarr directory.
        template: Dataset with every dim of the output (values ignored; coordinates and attributes copied).
        dim, block: the dimension written block by block and the block length (= its zarr chunk).
        attrs: global attributes to add (provenance).
        mode: ``"w-"`` refuse an existing store, ``"w"`` overwrite it, ``"resume"`` continue it
            after checking it was written with the same settings (nothing is written when not).
        provenance: the record compared on resume (default ``attrs``).
        always_missing: per variable, a boolean mask over its trailing (grid) dims of points with no
            data at all (land in an SST field): :meth:`write` leaves them NaN.
    """

    def __init__(self, path: str | os.PathLike, template: xr.Dataset, *, dim: Hashable, block: int,
                 attrs: Mapping | None = None, mode: str = "w-", provenance: Mapping | None = None,
                 always_missing: Mapping[Hashable, np.ndarray] | None = None):
        self.path, self.dim, self.block, self.size = Path(path), dim, int(block), int(template.sizes[dim])
        self.dims = {k: v.dims for k, v in template.data_vars.items()}
        self.always_missing = {k: np.asarray(v, dtype=bool) for k, v in (always_missing or {}).items()}
        if mode not in ("w-", "w", "resume"):
            raise ValueError(f"mode must be 'w-', 'w' or 'resume', got {mode!r}")
        if self.path.exists() and mode == "resume":
            self._check(template, attrs if provenance is None else provenance)
            return
        if self.path.exists():
            if mode == "w-":
                raise FileExistsError(f"{self.path} exists; pass mode='w' (--overwrite) to replace it "
                                      "or mode='resume' (--resume) to continue it")
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        data = {name: (v.dims, da.full(v.shape, np.nan, dtype=v.dtype if v.dtype.kind == "f" else np.float32,
                                       chunks=[self.block if d == dim else s for d, s in zip(v.dims, v.shape)]), dict(v.attrs))
                for name, v in template.data_vars.items()}
        ds = xr.Dataset(data, coords=template.coords, attrs={**template.attrs, **(attrs or {}), RECORD: "[]"})
        with quiet_consolidated(_QUIET):
            ds.to_zarr(self.path, mode="w", compute=False, consolidated=False)

    def _check(self, template: xr.Dataset, provenance: Mapping | None) -> None:
        try:
            ds = xr.open_zarr(self.path, consolidated=False)
        except Exception as exc:  # noqa: BLE001 - whatever lies there, it is not ours to resume
            raise ValueError(f"cannot resume {os.fspath(self.path)!r}: not a sciffusion store ({exc})") from None
        check_provenance(ds.attrs, provenance or {}, self.path)
        for name, v in template.data_vars.items():
            if name not in ds or ds[name].sizes != v.sizes:
                got = dict(ds[name].sizes) if name in ds else "missing"
                raise ValueError(f"cannot resume {os.fspath(self.path)!r}: variable {name!r} is {got}, this run's is "
                                 f"{dict(v.sizes)}; resume with the same sizes or pass mode='w' (--overwrite)")
        var = ds[next(iter(self.dims))]
        if var.encoding.get("chunks"):  # written with another block length: resume in the store's own blocks
            self.block = int(var.encoding["chunks"][var.dims.index(self.dim)])

    def blocks(self) -> list[range]:
        return [range(a, min(a + self.block, self.size)) for a in range(0, self.size, self.block)]

    def completed(self) -> set[int]:
        """First indices of the blocks written (every block once the store is finalized)."""
        group = zarr.open_group(str(self.path), mode="r", use_consolidated=False)
        attrs, starts = group.attrs, [b.start for b in self.blocks()]
        old = [k for k in _OLD_RECORDS if k in attrs]
        if RECORD not in attrs and not old and _OLD_FLAGS not in group:
            return set(starts)
        done = set(json.loads(attrs.get(RECORD, "[]")))
        for key in old:
            value = json.loads(str(attrs[key]))
            done |= ({s for s in starts if s + self.block <= value or value >= self.size} if isinstance(value, int)
                     else {int(v) * (self.block if key.endswith("chunks") else 1) for v in value})
        if _OLD_FLAGS in group:
            flags = np.asarray(group[_OLD_FLAGS]).astype(bool).reshape(-1)
            done |= {s for s in starts if s < flags.size and flags[s]}
        return done

    def missing(self) -> list[range]:
        """The blocks not yet written."""
        done = self.completed()
        return [b for b in self.blocks() if b.start not in done]

    def written(self) -> int:
        """How many leading indices along ``dim`` are written (a rollout continues from there)."""
        done = self.completed()
        return next((b.start for b in self.blocks() if b.start not in done), self.size)

    def write(self, block: range, data: Mapping[Hashable, np.ndarray],
              dims: Mapping[Hashable, Sequence[Hashable]] | None = None) -> None:
        """Write ``block`` (one whole block; ``data[name]`` on the variable's dims, or ``dims[name]``)
        and then record it."""
        if block.start % self.block or (block.stop != self.size and len(block) != self.block) or block.stop > self.size:
            raise ValueError(f"{self.dim} block {block} is not one of the store's blocks of {self.block}")
        arrays = {}
        for k, v in data.items():
            v = np.asarray(v)
            if k in self.always_missing and self.always_missing[k].any():
                v = np.where(self.always_missing[k], np.nan, v).astype(v.dtype)
            arrays[k] = ((dims or self.dims)[k], v)
        with quiet_consolidated(_QUIET):
            xr.Dataset(arrays).to_zarr(self.path, region={self.dim: slice(block.start, block.stop)}, consolidated=False)
        add_to_record(self.path, RECORD, block.start)

    def read(self, index) -> dict[Hashable, np.ndarray]:
        """Every variable's values at ``index`` along ``dim``."""
        ds = xr.open_zarr(self.path, consolidated=False)
        return {k: ds[k].isel({self.dim: index}).values for k in self.dims}

    def finalize(self) -> xr.Dataset:
        """Once every block is written: drop the completion record, consolidate, and open the store."""
        if self.missing():
            raise ValueError(f"{os.fspath(self.path)!r} still misses {self.dim} blocks {self.missing()}")
        group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        for key in (RECORD, *_OLD_RECORDS):
            if key in group.attrs:
                del group.attrs[key]
        if _OLD_FLAGS in group:
            del group[_OLD_FLAGS]
        return self.open(consolidate=True)

    def open(self, consolidate: bool = False) -> xr.Dataset:
        with quiet_consolidated(_QUIET):
            if consolidate:
                zarr.consolidate_metadata(str(self.path))
            return xr.open_zarr(self.path, consolidated=consolidate or None)
