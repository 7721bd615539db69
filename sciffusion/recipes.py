"""Config-driven training and checkpoint-driven sampling: what ``sciffusion train`` and
``sciffusion sample`` run, usable from Python too.

A training config (TOML or JSON) has three tables::

    [data]                      # -> sciffusion.data.PairDataset
    path = "fields.zarr"        # zarr or netCDF
    variables = ["u"]
    grid_dims = ["y", "x"]
    along = "time"              # or "member" with n_seeds = K
    offset = 1
    validation_fraction = 0.1   # the last pairs are held out for the validation loss

    [model]
    net = "UNet2d"              # a sciffusion.nets name; channel counts are filled in
    sigma_data = 1.0
    kwargs = { channels = [16, 32], padding = "circular" }

    [training]                  # -> sciffusion.training.Trainer keywords, plus:
    out_dir = "runs/example"
    steps = 2000
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciffusion._deprecate import renamed_keywords
from sciffusion.data import Normalizer, PairDataset, open_dataset
from sciffusion.data.provenance import generated_attrs, run_attrs
from sciffusion.diffusion import Denoiser
from sciffusion.diffusion.sample import check_sample_options
from sciffusion.nets import build_net

_PAIR_KEYS = ("variables", "grid_dims", "along", "offset", "history", "n_seeds", "seed_members",
              "cond_variables", "static", "cond_grid_dims", "allow_missing")
_DATA_KEYS = ("path", "validation_fraction", *_PAIR_KEYS)
_MODEL_KEYS = ("net", "sigma_data", "kwargs")
# Trainer keywords that train_from_config fills itself, not the [training] table
_TRAINER_OWN = ("denoiser", "train_data", "val_data", "config", "progress", "resume", "loss_fn")
_CHANNEL_KEYS = {"UNet2d": ("in_channels", "cond_channels"), "PeriodicConv1d": ("in_channels", "cond_channels"),
                 "MLP": ("in_features", "cond_features")}
# `sciffusion sample`: EDM's deterministic Heun with 18 steps (35 denoiser calls), EDM's own setting
# (Karras et al. 2022, CIFAR-10): a safe budget for a net of unknown quality
DEFAULT_SAMPLER = {"method": "heun", "steps": 18}


def read_config(path: str | os.PathLike) -> dict:
    """Read a TOML or JSON config, with a clear error naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from exc


def _section(cfg: dict, name: str) -> dict:
    if name not in cfg or not isinstance(cfg[name], dict):
        raise ValueError(f"config has no [{name}] table")
    return dict(cfg[name])


def _check_keys(table: dict, name: str, valid) -> None:
    """Refuse a key of config table ``[name]`` that is not in ``valid`` (a typo would be ignored)."""
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ValueError(f"config [{name}] has unknown key(s) {unknown}; valid keys: {sorted(valid)}")


def _training_keys() -> list[str]:
    """The valid ``[training]`` keys: the Trainer's keywords, plus ``steps``."""
    import inspect

    from sciffusion.training import Trainer

    return [k for k in inspect.signature(Trainer).parameters if k not in _TRAINER_OWN] + ["steps"]


def pairs_from_spec(ds: xr.Dataset, spec: dict, normalizer: Normalizer | None) -> PairDataset:
    kwargs = {k: spec[k] for k in _PAIR_KEYS if k in spec and spec[k] is not None}
    if "variables" not in kwargs or "grid_dims" not in kwargs:
        raise ValueError("[data] needs 'variables' and 'grid_dims'")
    return PairDataset(ds, normalizer=normalizer, **kwargs)


def train_from_config(cfg: dict, *, ds: xr.Dataset | None = None, progress: bool = True, resume: bool = True):
    """Build data, model and :class:`~sciffusion.training.Trainer` from a config and train.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) this joins the process group and
    trains with DDP; ``[training] batch_size`` is the global batch. Returns the trainer (its
    ``out_dir`` holds the checkpoints)."""
    from sciffusion.distributed.ddp import init_from_env, shutdown

    _, started = init_from_env()
    try:
        return _train_from_config(cfg, ds=ds, progress=progress, resume=resume)
    finally:
        if started:
            shutdown()


def _train_from_config(cfg: dict, *, ds: xr.Dataset | None, progress: bool, resume: bool):
    from sciffusion.data.io import refuse_overlap
    from sciffusion.training import Trainer, seeded

    data, model, training = _section(cfg, "data"), _section(cfg, "model"), _section(cfg, "training")
    for table, name, valid in ((data, "data", _DATA_KEYS), (model, "model", _MODEL_KEYS),
                               (training, "training", _training_keys())):
        _check_keys(table, name, valid)
    refuse_overlap(training.get("out_dir"), "[training] out_dir", {"[data] path": data.get("path")})
    if ds is None:
        if "path" not in data:
            raise ValueError("[data] needs 'path' (a zarr store or netCDF file)")
        ds = open_dataset(data["path"])
    variables = list(dict.fromkeys(list(data["variables"]) + list(data.get("cond_variables") or []) + list(data.get("static") or [])))
    normalizer = Normalizer.fit(ds, variables)
    pairs = pairs_from_spec(ds, data, normalizer)
    n_val = int(len(pairs) * float(data.get("validation_fraction", 0.0)))
    idx = torch.arange(len(pairs))
    train = torch.utils.data.Subset(pairs, idx[: len(pairs) - n_val].tolist())
    val = torch.utils.data.Subset(pairs, idx[len(pairs) - n_val :].tolist()) if n_val else None
    name = model.get("net", "UNet2d")
    kwargs = dict(model.get("kwargs", {}))
    if name in _CHANNEL_KEYS:
        cin, ccond = _CHANNEL_KEYS[name]
        kwargs.setdefault(cin, pairs.channels)
        kwargs.setdefault(ccond, pairs.cond_channels)
    steps = int(training.pop("steps", 1000))
    out_dir = training.pop("out_dir", None)
    if out_dir is None:
        raise ValueError("[training] needs 'out_dir' for the checkpoints")
    # the grid trained on: sampling_plan refuses another size for a periodic net
    stored_data = {k: v for k, v in data.items() if k != "validation_fraction"}
    stored_data["grid_shape"] = list(pairs.grid_shape)
    with seeded(int(training.get("seed", 0))):  # the caller's global RNG is left as it was
        den = Denoiser(build_net({"name": name, "kwargs": kwargs}), sigma_data=float(model.get("sigma_data", 1.0)))
        trainer = Trainer(den, train, val_data=val, out_dir=out_dir, progress=progress, resume=resume,
                          config={"data": stored_data, "normalizer": normalizer.to_dict()}, **training)
        trainer.fit(steps)
    return trainer


@renamed_keywords(members="n_members")
def sample_from_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | xr.Dataset,
    out: str | os.PathLike,
    *,
    n_members: int = 16,
    cases: slice | list[int] | None = None,
    steps: int | None = None,
    method: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    member_chunk: int = 8,
    mode: str = "w-",
    progress: bool = True,
    device: str | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    batches_per_task: int | None = None,
    **sampler_options,
) -> xr.Dataset:
    """Generate an ensemble for the conditions of ``data`` and write it to zarr (resumable).

    The conditions are the condition/target pairs of ``data`` built with the checkpoint's own
    data spec; ``cases`` selects some of them (default all). Output dims are
    ``(case, member, *grid)`` with the target's coordinates on ``case``, values in physical
    units (normalisation undone), CF attributes copied from the input, and provenance in attrs.
    Member blocks already in ``out`` are skipped when ``mode="resume"``.

    With ``scheduler`` (a dask scheduler address or ``distributed.Client``) or ``workers`` (a
    local cluster of that many worker processes) the member blocks, cut into tasks of
    ``batches_per_task`` sampler batches, are generated as dask tasks (see
    :func:`sciffusion.distributed.generate_to_store`); the values are bit-for-bit the same as here.

    ``steps`` and ``method`` default to :data:`DEFAULT_SAMPLER`; a distilled student (``sciffusion
    distill``) samples with its own few-call DDIM schedule and refuses other sampler settings.
    """
    from sciffusion.checkpoint import resolve
    from sciffusion.emulators import EnsembleStore, generate

    sizes = {"n_members": n_members, "steps": steps, "batch_size": batch_size, "member_chunk": member_chunk}
    for name, value in sizes.items():
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    student = json.loads((resolve(checkpoint) / "config.json").read_text()).get("student")
    if student is not None:
        streams = {k: sampler_options.pop(k) for k in ("rng",) if k in sampler_options}  # not a sampler setting
        if steps is not None or method is not None or sampler_options:
            raise ValueError(f"{os.fspath(checkpoint)!r} is a distilled student: it samples with its own "
                             f"{len(student['sigmas']) - 1}-call {student.get('method', 'ddim')} schedule; "
                             "give no steps, method or sampler options")
        method = student.get("method", "ddim")
        steps, sampler_options = len(student["sigmas"]) - 1, {"sigmas": student["sigmas"], **streams}
        if student.get("start", "noise") != "noise":
            sampler_options["start"] = student["start"]
        if method == "ddim":
            sampler_options["eta"] = 0.0
    steps = DEFAULT_SAMPLER["steps"] if steps is None else steps
    method = DEFAULT_SAMPLER["method"] if method is None else method
    check_sample_options(method, sampler_options)  # a bad option fails before the store is created
    plan = sampling_plan(checkpoint, data, n_members=n_members, cases=cases, steps=steps, method=method, seed=seed,
                         device=device, **sampler_options)
    scale_out = scheduler is not None or workers is not None
    path = Path(out).resolve() if scale_out else out  # dask workers may run in another directory
    store = EnsembleStore(path, plan["template"], n_members, member_chunk=member_chunk, member_axis=1,
                          attrs=plan["provenance"], mode=mode, always_missing=plan["always_missing"])
    if scale_out and store.missing():  # (a finished store needs no cluster)
        from sciffusion.distributed.cluster import dask_client
        from sciffusion.distributed.generate import generate_to_store

        with dask_client(scheduler, workers) as client:
            generate_to_store(client, store, plan, seed=seed, batch_size=batch_size, steps=steps, method=method,
                              batches_per_task=batches_per_task, progress=progress, device=device, **sampler_options)
        return store.finalize()
    den, normalizer, variables, event_shape = plan["denoiser"], plan["normalizer"], plan["variables"], plan["event_shape"]
    for block in store.missing():
        x = generate(den, plan["cond"], block, event_shape=event_shape, seed=seed, batch_size=batch_size, steps=steps,
                     method=method, progress=progress, device=device, **sampler_options)  # (N, b, C, *grid)
        phys = (x if normalizer is None else normalizer.decode(x.flatten(0, 1), variables).reshape(x.shape)).numpy()
        store.write(block, {v: phys[:, :, k] for k, v in enumerate(variables)}, {v: plan["dims"] for v in variables})
    return store.finalize()


@renamed_keywords(members="n_members")
def sampling_plan(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | xr.Dataset,
    *,
    n_members: int,
    cases: slice | list[int] | None,
    steps: int,
    method: str,
    seed: int,
    device: str | None = None,
    **sampler_options,
) -> dict[str, Any]:
    """Everything :func:`sample_from_checkpoint` needs before generating, as a dict.

    Keys: ``denoiser``, ``config``, ``checkpoint_dir`` and ``weights_sha256`` (the EMA weights
    sampled from), ``normalizer`` (or None), ``cond`` ``(N, *cond_shape)`` for the selected
    cases, ``template`` (the output Dataset without ``member``), ``provenance`` (attrs),
    ``variables``, ``dims`` (``["case", "member", *grid]``), ``event_shape`` ``(C, *grid)`` and
    ``always_missing`` (per variable, the grid points with no data anywhere in the input).
    """
    from sciffusion.checkpoint import load_denoiser, sha256, weights_file

    den, config = load_denoiser(checkpoint, device=device)
    spec = config.get("data")
    if spec is None:
        raise ValueError(f"checkpoint {checkpoint} has no data spec; it was not trained by train_from_config")
    normalizer = Normalizer.from_dict(config["normalizer"]) if config.get("normalizer") else None
    ds = open_dataset(data) if not isinstance(data, xr.Dataset) else data
    pairs = pairs_from_spec(ds, spec, normalizer)
    _check_grid(den.net, spec.get("grid_shape"), pairs.grid_shape, spec["grid_dims"], data)
    ids = list(range(len(pairs)))
    ids = ids[cases] if isinstance(cases, slice) else (list(cases) if cases is not None else ids)
    if not ids:
        raise ValueError(f"no cases selected out of {len(pairs)}")
    wrong = [i for i in ids if not 0 <= i < len(pairs)]
    if wrong:
        raise ValueError(f"cases {wrong} out of range: the data hold {len(pairs)} condition/target pairs "
                         f"(cases 0..{len(pairs) - 1})")
    cond = torch.stack([pairs[i]["cond"] for i in ids])
    where = [pairs.index(i) for i in ids]
    along = spec.get("along", "time")
    grid = [str(d) for d in spec["grid_dims"]]
    coords: dict[str, Any] = {d: ds[d] for d in grid if d in ds.coords}
    coords["case"] = np.arange(len(ids))
    for d in pairs.sample_dims:
        if d in ds.coords:
            coords[str(d)] = ("case", ds[d].values[[w["sample"][d] for w in where]])
    if along in ds.coords:
        coords[f"target_{along}"] = ("case", ds[along].values[[w["target"] for w in where]])
    variables = pairs.variables
    template = xr.Dataset(
        {v: (["case", *grid], np.zeros((len(ids), *pairs.grid_shape), np.float32), dict(ds[v].attrs)) for v in variables},
        coords=coords, attrs=dict(ds.attrs),
    )
    # grid points missing at every time and sample of the input (land in an SST field) stay missing
    always_missing = {v: ds[v].isnull().all([d for d in ds[v].dims if d not in grid]).transpose(*grid).values
                      for v in variables}
    ckpt_dir = Path(config["checkpoint_dir"])
    digest = sha256(weights_file(ckpt_dir))
    provenance = {
        **generated_attrs(ds.attrs, f"sciffusion sample ensemble ({n_members} members per case)", "sciffusion sample"),
        **run_attrs(f"sciffusion sample {checkpoint} (members={n_members})", checkpoint=str(ckpt_dir),
                    checkpoint_sha256=digest, sampler=json.dumps({"method": method, "steps": steps, **sampler_options}),
                    seed=seed),
    }
    return {"denoiser": den, "config": config, "checkpoint_dir": ckpt_dir, "weights_sha256": digest,
            "normalizer": normalizer, "cond": cond, "template": template, "provenance": provenance,
            "variables": list(variables), "dims": ["case", "member", *grid],
            "event_shape": (pairs.channels, *pairs.grid_shape), "always_missing": always_missing}


def _check_grid(net, trained: list[int] | None, given: tuple[int, ...], grid_dims, data) -> None:
    """Refuse conditions on another grid size than the periodic net was trained on.

    With circular padding (a ``PeriodicConv1d``, a ``UNet2d`` with a ``"circular"`` axis) the grid
    size is the period of the domain: a 16x16 crop of a 32x32 doubly periodic field is another
    physical system, whose samples would look plausible and be wrong. A net with bounded
    (zero/reflect) padding only sees local neighbourhoods, so another size is allowed (a
    regional crop or a larger domain, as patch-based downscaling does). Checkpoints written
    before the trained grid was recorded (no ``grid_shape``) are not checked.
    """
    if trained is None or tuple(trained) == tuple(given):
        return
    padding = getattr(net, "config", {}).get("padding", ())
    if type(net).__name__ == "PeriodicConv1d" or "circular" in padding:
        dims = " x ".join(str(d) for d in grid_dims)
        where = "the data" if isinstance(data, xr.Dataset) else str(data)
        raise ValueError(f"the conditions in {where} are on a {tuple(given)} grid ({dims}) but the model was "
                         f"trained on {tuple(trained)} with periodic (circular) padding, where the grid size is the "
                         f"domain's period; give fields on the trained grid")
