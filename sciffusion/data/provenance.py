"""Provenance and completion records of resumable zarr stores.

Every resumable writer (``systems.simulate``, :class:`~sciffusion.emulators.EnsembleStore`,
rollouts, downscaling, ``sciffusion sample``) records its settings in the store's attributes and
checks them with :func:`check_provenance` before resuming; blocks written are listed in a JSON
completion record (:func:`add_to_record`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import zarr

#: provenance keys that may differ between a run and its resumption: when and how it was started,
#: where the checkpoint lay (the weights themselves are identified by their hash) and the
#: sciffusion release (a bug-fix upgrade between a crash and its resume).
RUN_SPECIFIC = frozenset({"created", "history", "checkpoint", "sciffusion_version"})


def _canonical(value) -> str:
    """``value`` as JSON, so a tuple equals the list zarr gives back and numpy scalars their Python twins."""
    return json.dumps(value, sort_keys=True, default=lambda v: v.item() if hasattr(v, "item") else str(v))


def _unpacked(record: Mapping) -> dict:
    """``record`` with ``systems.simulate``'s JSON settings (``sciffusion_config``) spread into their
    keys, so that a difference names the setting."""
    out = dict(record)
    if isinstance(out.get("sciffusion_config"), str):
        out.update(json.loads(out.pop("sciffusion_config")))
    return out


def check_provenance(stored: Mapping, new: Mapping, path: str | os.PathLike, *,
                     overwrite: str = "--overwrite (mode='w')") -> None:
    """Refuse to resume ``path`` unless it was written with the settings of this run.

    Every key of ``new`` (the provenance this run would write) except :data:`RUN_SPECIFIC` must
    hold the same value in ``stored`` (the store's attributes); a key the store lacks differs.

    Raises:
        ValueError: naming each differing key with its stored and its new value, and ``overwrite``
            (how to replace the store instead).
    """
    if "sciffusion_config" in new:  # a simulation's settings: compare them one by one
        stored, new = _unpacked(stored), _unpacked(new)
    diff = [k for k in new if k not in RUN_SPECIFIC and (k not in stored or _canonical(stored[k]) != _canonical(new[k]))]
    if diff:
        details = "; ".join(f"{k}: stored {stored[k]!r}, now {new[k]!r}" if k in stored else f"{k}: not stored, now {new[k]!r}"
                            for k in diff)
        raise ValueError(f"cannot resume {os.fspath(path)!r}: it was written with other settings ({details}); "
                         f"use {overwrite} or resume with the same settings")


def add_to_record(path: str | os.PathLike, key: str, block: int) -> None:
    """Record ``block`` as written in the completion record ``key`` (call after the data is written)."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    group.attrs[key] = json.dumps(sorted(set(json.loads(group.attrs.get(key, "[]"))) | {int(block)}))


def run_attrs(history: str, **fields) -> dict:
    """The attributes that say what made a dataset: ``sciffusion_version``, ``fields`` (checkpoint, its
    weights' hash, sampler, seed...), ``created`` (UTC) and ``history`` (the call)."""
    from sciffusion import __version__

    return {"sciffusion_version": __version__, **fields, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "history": history}


def generated_attrs(source: Mapping, title: str, producer: str) -> dict[str, str]:
    """Global attributes of a dataset generated from ``source`` (e.g. emulated from a physics run).

    The source's ``title`` and ``source`` would now be false: ``title`` becomes ``title``, the old
    one is kept as ``source_title``; ``source`` names ``producer`` and what it emulates.
    """
    out = {"title": title, "source": producer + (f" (emulating: {source['source']})" if "source" in source else "")}
    if "title" in source:
        out["source_title"] = str(source["title"])
    return out
