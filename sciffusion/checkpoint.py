"""Safe checkpoints: safetensors weights + JSON config, atomic writes, never unpickled.

A checkpoint is a directory::

    step_000500/
      config.json            how to rebuild the model (net spec, sigma_data), normaliser, data
                             and training settings, sha256 of every file, sciffusion version
      weights.safetensors    raw network weights
      ema.safetensors        EMA weights (what sampling uses by default), if any
      trainer.safetensors    optimizer tensors and RNG states (only for resuming training)
      trainer.json           step, epoch, batch position, optimizer hyper-parameters

A training run directory holds several of them plus a ``latest`` file naming the newest.
Every file is written to a temporary name, fsynced and renamed; a step directory is renamed
into place only when complete, so a run killed at any instant leaves either the old or the
new checkpoint, never a torn one. Loading reads only JSON and safetensors, and refuses any
file that carries a pickle payload (``torch.save`` output, ``.pt``/``.pkl`` files).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from sciffusion.data.io import atomic_path, atomic_write_bytes, fsync_dir  # noqa: F401  (atomic_write_bytes: public here)

FORMAT = "sciffusion-checkpoint"
FORMAT_VERSION = 1


class UnsafeCheckpointError(ValueError):
    """A file that is not plain safetensors/JSON (e.g. a pickle) was offered as a checkpoint."""


class DamagedCheckpointError(UnsafeCheckpointError):
    """A checkpoint file is truncated, torn or does not match its recorded sha256 (the message names it)."""


def _damaged(path: Path, why: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"checkpoint file {path} is damaged (truncated or not safetensors): {why}")


# ----------------------------------------------------------------------------- low-level I/O
def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_safetensors(path: str | os.PathLike) -> None:
    """Refuse anything that is not a well-formed safetensors file, naming pickles explicitly."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    # a safetensors file starts with its header length (8 bytes, little endian) then "{"; the low
    # byte of that length may well be 0x80, the pickle protocol marker, so check the format first
    well_formed = len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8
    pickled = (not well_formed and (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04")) \
        or path.suffix in {".pt", ".pth", ".pkl", ".ckpt", ".bin"}
    if pickled:
        raise UnsafeCheckpointError(
            f"{path} carries a pickle payload (torch.save / pickle format); sciffusion never unpickles "
            "checkpoints because loading a pickle can run arbitrary code. Convert it to safetensors "
            "in a trusted environment (safetensors.torch.save_file)."
        )
    if not well_formed:
        raise _damaged(path, f"bad safetensors header ({size} bytes)")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise _damaged(path, str(exc)) from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpointError(f"checkpoint file {path} is damaged (not valid JSON: {exc})") from exc


# ----------------------------------------------------------------------------- optimizer <-> flat
def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and JSON-able rest."""
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    directory: str | os.PathLike,
    *,
    weights: dict[str, torch.Tensor],
    config: dict,
    ema: dict[str, torch.Tensor] | None = None,
    trainer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_meta: dict | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically (built aside, then renamed into place)."""
    from sciffusion import __version__

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    files = {"weights.safetensors": weights}
    if ema is not None:
        files["ema.safetensors"] = ema
    if trainer_tensors is not None:
        files["trainer.safetensors"] = trainer_tensors
    with atomic_path(directory, directory=True) as tmp:  # an existing checkpoint is replaced after the swap
        tmp.mkdir()
        for name, tensors in files.items():  # serialised in memory: safetensors' save_file creates files mode 0600
            atomic_write_bytes(tmp / name, safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
        if trainer_meta is not None:
            _write_json(tmp / "trainer.json", trainer_meta)
        full = dict(config)
        full.update(format=FORMAT, format_version=FORMAT_VERSION, sciffusion_version=__version__)
        full["sha256"] = {name: sha256(tmp / name) for name in files}
        _write_json(tmp / "config.json", full)
        fsync_dir(tmp)
    return directory


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a step directory or a run directory (via its ``latest`` file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        check_safetensors(path)  # a stray file: refuse pickles with the clear message
        raise ValueError(f"{path} is a file; a sciffusion checkpoint is a directory holding config.json")
    if (path / "config.json").exists():
        return path
    latest = path / "latest"
    if latest.exists():
        target = path / latest.read_text().strip()
        if not (target / "config.json").exists():
            raise DamagedCheckpointError(f"checkpoint {target} named by {latest} is missing or incomplete (no config.json)")
        return target
    raise FileNotFoundError(f"{path} holds no checkpoint (no config.json and no 'latest' file)")


def step_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The ``step_N`` checkpoint directories of a training run, oldest first (by step)."""
    dirs = [p for p in Path(run_dir).glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]))


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints of a training run to resume from, best first: the one ``latest`` names,
    then the other ``step_N`` directories from the newest back."""
    run_dir = Path(run_dir)
    latest = run_dir / "latest"
    first = [run_dir / latest.read_text().strip()] if latest.exists() else []
    return first + [p for p in reversed(step_dirs(run_dir)) if p not in first]


def load_newest_usable(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The newest undamaged checkpoint of a training run, with its trainer state, and why each newer
    one was skipped: ``(checkpoint, [reasons])``. Raises DamagedCheckpointError when none is usable."""
    damaged = []
    for d in run_checkpoints(run_dir):
        try:
            return load_checkpoint(d, trainer=True), damaged
        except (DamagedCheckpointError, FileNotFoundError) as exc:
            damaged.append(str(exc))
    raise DamagedCheckpointError(f"out_dir {run_dir} holds no usable checkpoint ({'; '.join(damaged) or 'none'}); "
                                 "use --fresh (resume=False) or another out_dir")


def config_difference(old: Any, new: Any, where: str = "") -> list[str]:
    """What differs between two JSON-like configs, one ``"net kwargs channels [4, 8] vs [8, 16]"`` per leaf."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in config_difference(old.get(k, "(absent)"), new.get(k, "(absent)"), f"{where} {k}".strip())]
    return [] if old == new else [f"{where} {old!r} vs {new!r}".strip()]


def load_checkpoint(path: str | os.PathLike, *, trainer: bool = False) -> dict[str, Any]:
    """Read a checkpoint: ``{"config", "weights", "ema", "dir"}`` (+ ``trainer_tensors``, ``trainer_meta``).

    Every safetensors file is checked against the sha256 recorded in ``config.json``.
    """
    d = resolve(path)
    for stray in d.iterdir():
        if stray.suffix in {".pt", ".pth", ".pkl", ".ckpt", ".bin"}:
            check_safetensors(stray)
    config = _read_json(d / "config.json")
    if config.get("format") != FORMAT:
        raise ValueError(f"{d / 'config.json'} is not a sciffusion checkpoint config (format={config.get('format')!r})")
    out: dict[str, Any] = {"config": config, "dir": d}
    names = ["weights", "ema"] + (["trainer"] if trainer else [])
    for name in names:
        f = d / f"{name}.safetensors"
        expected = config.get("sha256", {}).get(f.name)
        if not f.exists():
            if expected is not None:
                raise DamagedCheckpointError(f"checkpoint file {f} is missing (config.json lists it)")
            out[name] = None
            continue
        tensors = _read_tensors(f)
        if expected is not None and sha256(f) != expected:
            raise DamagedCheckpointError(f"checkpoint file {f} is damaged: it does not match the sha256 in config.json")
        out[name] = tensors
    if trainer:
        out["trainer_tensors"] = out.pop("trainer")
        out["trainer_meta"] = _read_json(d / "trainer.json")
    return out


def weights_file(directory: str | os.PathLike) -> Path:
    """The weights a checkpoint directory samples with: ``ema.safetensors`` when present, else
    ``weights.safetensors`` (its sha256 identifies the model in provenance)."""
    d = Path(directory)
    return d / "ema.safetensors" if (d / "ema.safetensors").exists() else d / "weights.safetensors"


def denoiser_from(ckpt: dict[str, Any], *, ema: bool = True, device: str | torch.device | None = None):
    """The trained denoiser of a :func:`load_checkpoint` result (EMA weights by default), frozen, in eval mode."""
    from sciffusion.diffusion import Denoiser
    from sciffusion.nets import build_net

    model = ckpt["config"]["model"]
    den = Denoiser(build_net(model["net"]), sigma_data=model.get("sigma_data", 1.0))
    den.load_state_dict(ckpt["ema"] if ema and ckpt["ema"] is not None else ckpt["weights"])
    den.eval().requires_grad_(False)
    return den if device is None else den.to(device)


def load_denoiser(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device | None = None):
    """Load a trained denoiser (EMA weights by default) and its config: ``(denoiser, config)``."""
    ckpt = load_checkpoint(path)
    config = dict(ckpt["config"])
    config["checkpoint_dir"] = str(ckpt["dir"])
    return denoiser_from(ckpt, ema=ema, device=device), config


def load_task(path: str | os.PathLike, key: str, label: str, *, others: dict[str, str] | None = None) -> dict[str, Any]:
    """:func:`load_checkpoint` of an emulator whose config has a ``key`` section; others are refused as not
    ``label``, naming what they are by a key of ``others`` (``{"dyffusion": "a DYffusion model; ..."}``)."""
    config = _read_json(resolve(path) / "config.json")
    if key not in config:
        found = [what for k, what in (others or {}).items() if k in config]
        raise ValueError(f"checkpoint {path} is not {label} (no '{key}' in its config)"
                         + (f": it is {found[0]}" if found else ""))
    return load_checkpoint(path)
