"""Open and write zarr stores and netCDF files, atomically where the format allows.

A reader never sees a half-written file: netCDF is written to a temporary file in the target
directory, fsync'd and renamed over the target; a zarr store is written to
``<path>.tmp-<pid>`` and renamed into place. Appends and region writes to an existing zarr
store (the resumable-ensemble pattern) pass straight through to ``Dataset.to_zarr``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
# Consolidated metadata (one read to open a store) is what xarray writes by default; zarr 3
# warns on every use that it is not yet in the v3 spec; it is intended here, so silence it.
_CONSOLIDATED_WARNING = "Consolidated metadata is currently not part in the Zarr format 3"


@contextlib.contextmanager
def quiet_consolidated(message: str = _CONSOLIDATED_WARNING):
    """Run the block with zarr's warnings about consolidated metadata (those matching ``message``) silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message)
        yield


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in NETCDF_SUFFIXES:
        return "netcdf"
    if suffix == ".zarr" or (path.is_dir() and any((path / m).exists() for m in ZARR_MARKERS)):
        return "zarr"
    raise ValueError(
        f"unknown dataset format for {str(path)!r}: expected a zarr store (a directory, "
        f"usually named *.zarr) or a netCDF file ({', '.join(NETCDF_SUFFIXES)})")


def open_dataset(path: str | os.PathLike, chunks: Any = {}, **kwargs: Any) -> xr.Dataset:  # noqa: B006
    """Open a zarr store or a netCDF file as an xarray Dataset.

    Args:
        path: a zarr store (directory, ``*.zarr``) or a netCDF file (``.nc``, ``.nc4``).
        chunks: dask chunks; ``{}`` (default) uses the chunking on disk, so the data stay
            lazy (dask-backed) until computed; ``None`` opens without dask; ``"auto"`` or a
            dict of sizes rechunk.
        **kwargs: passed to :func:`xarray.open_zarr` / :func:`xarray.open_dataset`.

    Raises:
        FileNotFoundError: nothing exists at ``path`` (the message names it).
        ValueError: ``path`` is neither a zarr store nor a netCDF file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {str(path)!r} (resolved: {path.resolve()})")
    if _format_of(path) == "netcdf":
        return xr.open_dataset(path, engine="netcdf4", chunks=chunks, **kwargs)
    with quiet_consolidated():
        ds = xr.open_zarr(path, chunks=chunks, **kwargs)
    # simulation stores of older sciffusion releases flagged their finished chunks in a variable: not data
    return ds.drop_vars("chunk_done") if "chunk_done" in ds and "sciffusion_config" in ds.attrs else ds


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, directory: bool = False):
    """Yield a hidden temporary path beside ``path`` to write a new file (or, with ``directory``, a new
    directory tree) to. When the block ends the file is fsync'd and renamed over ``path`` (a directory
    already there is moved aside first and dropped after the swap, or put back if the swap fails) and the
    rename is flushed; when the block fails the temporary is removed. Readers see the old or the new, never
    a partial one."""
    tmp, old = (path.with_name(f".{path.name}.{what}-{os.getpid()}") for what in ("tmp", "old"))
    if directory:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    try:
        yield tmp
        if not directory:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        elif path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`).

    The file gets the mode a plain ``open(path, "w")`` gives (``0o666`` less the umask)."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def _as_dataset(ds: xr.Dataset | xr.DataArray) -> xr.Dataset:
    if isinstance(ds, xr.DataArray):
        return ds.to_dataset(name=ds.name if ds.name is not None else "data")
    return ds


def _check_mode(path: Path, mode: str) -> None:
    if mode not in ("w", "w-"):
        raise ValueError(f"mode must be 'w' (overwrite) or 'w-' (fail if it exists); got {mode!r}")
    if mode == "w-" and path.exists():
        raise FileExistsError(f"{str(path)!r} already exists; pass mode='w' (--overwrite) to overwrite it")


def write_zarr(ds: xr.Dataset | xr.DataArray, path: str | os.PathLike, *, mode: str = "w-",
               encoding: Mapping[str, Any] | None = None, chunks: Mapping[str, int] | None = None,
               append_dim: str | None = None, region: Mapping[str, Any] | str | None = None,
               consolidated: bool | None = None, **kwargs: Any) -> Path:
    """Write ``ds`` to a zarr store at ``path``, keeping attrs; returns the path.

    Args:
        mode: ``"w-"`` (default) refuses an existing store, ``"w"`` replaces it; a new store
            is written to a hidden ``.<name>.tmp-<pid>`` beside it and renamed into place (:func:`atomic_path`), so ``path`` never holds
            a partial store. ``"a"`` / ``"r+"`` (and any ``append_dim`` or ``region``) write
            into the existing store directly, as :meth:`xarray.Dataset.to_zarr` does.
        encoding: per-variable zarr encoding (compressors, chunks, ...).
        chunks: dask chunks to write with, e.g. ``{"member": -1, "time": 1}``; stale on-disk
            chunk encodings from the source are dropped so they cannot conflict.
        append_dim, region, consolidated, **kwargs: passed to ``to_zarr``.
    """
    ds = _as_dataset(ds)
    path = Path(path).expanduser()
    if chunks is not None:
        ds = ds.chunk(dict(chunks))
        for var in ds.variables.values():
            for key in ("chunks", "preferred_chunks", "shards"):
                var.encoding.pop(key, None)
    if append_dim is not None or region is not None or mode in ("a", "a-", "r+"):
        with quiet_consolidated():
            ds.to_zarr(path, mode=mode if mode not in ("w", "w-") else "a", encoding=encoding,
                       append_dim=append_dim, region=region, consolidated=consolidated,
                       **kwargs)
        return path
    _check_mode(path, mode)
    with atomic_path(path, directory=True) as tmp, quiet_consolidated():
        ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=consolidated, **kwargs)
    return path


def _netcdf_attr(value: Any) -> Any:
    """netCDF attributes hold strings, numbers and 1-D arrays; encode the rest (bool, dict,
    None, nested lists) as JSON text so provenance survives the trip."""
    if isinstance(value, (str, bytes, int, float, np.number, np.ndarray)) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value):
        return np.asarray(value)
    return json.dumps(value, default=str)


def write_netcdf(ds: xr.Dataset | xr.DataArray, path: str | os.PathLike, *, mode: str = "w-",
                 encoding: Mapping[str, Any] | None = None, **kwargs: Any) -> Path:
    """Write ``ds`` to a netCDF-4 file at ``path`` atomically; returns the path.

    The file is written to a hidden temporary file in the same directory, fsync'd, and
    ``os.replace``'d over ``path``: readers see the old file or the new one, never a partial
    one, and a dataset lazily opened from ``path`` itself can be written back to it.
    Attributes netCDF cannot hold (bool, dict, None) are stored as JSON text.

    Args:
        mode: ``"w-"`` (default) refuses an existing file, ``"w"`` replaces it.
        encoding, **kwargs: passed to :meth:`xarray.Dataset.to_netcdf` (engine netcdf4).
    """
    ds = _as_dataset(ds).copy()
    path = Path(path).expanduser()
    _check_mode(path, mode)
    ds.attrs = {k: _netcdf_attr(v) for k, v in ds.attrs.items()}
    for var in ds.variables.values():
        var.attrs = {k: _netcdf_attr(v) for k, v in var.attrs.items()}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, mode="w", engine="netcdf4", encoding=encoding, **kwargs)
    return path


def refuse_overlap(out: str | os.PathLike | None, flag: str, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output path that is one of the ``inputs``, lies inside one, or holds one.

    ``out`` is the path given by the option ``flag`` (e.g. ``"-o"``); ``inputs`` maps each input's
    name (``"DATA"``, ``"--forcings"``) to its path (None: not given). Paths are compared after
    resolving symbolic links (and by inode when both exist), so a link to the input is the input.
    Writing there with ``--overwrite`` would delete the input before reading it.
    """
    if out is None:
        return
    target = Path(out).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if target == source or (target.exists() and source.exists() and os.path.samefile(target, source)):
            relation = "is"
        elif target.is_relative_to(source):
            relation = "lies inside"
        elif source.is_relative_to(target):
            relation = "holds"
        else:
            continue
        raise ValueError(f"{flag} {os.fspath(out)} {relation} the input {name} {os.fspath(path)}; "
                        f"writing there would destroy it, choose another output path")
