"""Denoiser backbones and their JSON specs.

Every backbone follows ``net(x, c_noise, cond=None) -> Tensor`` (x: (B, C, *spatial),
c_noise: (B,), cond: (B, Cc, *spatial) or None; output shaped like x with ``out_channels``)
and keeps its JSON-serialisable constructor keywords in ``net.config``, so a checkpoint can
store ``net_spec(net)`` and rebuild the net with ``build_net(spec)``. :class:`EOFMLP` is the
exception to the shapes: it works on EOF coefficients (latent diffusion) and has ``encode`` /
``decode`` for the gridded edges. Names resolve only
from :data:`NETS`, never from import paths.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .conv1d import PeriodicConv1d
from .eof import EOFMLP
from .unet import UNet2d

from .mlp import MLP
from .sfno import SFNO

NETS: dict[str, type[nn.Module]] = {
    "UNet2d": UNet2d,
    "PeriodicConv1d": PeriodicConv1d,
    "MLP": MLP,
    "SFNO": SFNO,
    "EOFMLP": EOFMLP,
}

__all__ = ["NETS", "EOFMLP", "MLP", "PeriodicConv1d", "SFNO", "UNet2d", "build_net", "net_spec", "task_spec"]


def _unwrap(net: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(net, "_orig_mod", None) or (
            net.module if isinstance(getattr(net, "module", None), nn.Module) else None)
        if inner is None:
            return net
        net = inner


def build_net(spec: dict[str, Any]) -> nn.Module:
    """Build a backbone from ``{"name": "UNet2d", "kwargs": {...}}``.

    Only the classes in :data:`NETS` can be built; an unknown name raises ValueError listing
    the known ones.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a net spec is a dict {{'name': ..., 'kwargs': {{...}}}}; got {spec!r}")
    extra = set(spec) - {"name", "kwargs"}
    if extra:
        raise ValueError(f"unexpected keys {sorted(extra)} in net spec; allowed: name, kwargs")
    name, kwargs = spec["name"], spec.get("kwargs", {}) or {}
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; known nets: {', '.join(sorted(NETS))}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"net spec 'kwargs' must be a dict; got {type(kwargs).__name__}")
    return NETS[name](**kwargs)


def task_spec(net: dict | None, default: str | None, nets: dict[str, tuple[dict, dict]], task: str, use: str) -> dict:
    """A task's backbone spec ``{"name", "kwargs"}``: ``net["name"]`` (else ``default``), its ``kwargs`` over
    the task's defaults and the task's fixed entries (channel counts) over both, ``nets[name] = (defaults,
    fixed)``. A net the task cannot use is refused naming ``task`` and those it can (``use``)."""
    spec = dict(net or {})
    name = spec.get("name") or default
    if name not in nets:
        what = (f"no default backbone for {task}" if name is None else f"unknown net {name!r}" if name not in NETS
                else f"{task} cannot use the {name} backbone")
        raise ValueError(f"{what}; use {use} (known nets: {', '.join(sorted(NETS))})")
    defaults, fixed = nets[name]
    return {"name": name, "kwargs": {**defaults, **dict(spec.get("kwargs") or {}), **fixed}}


def net_spec(net: nn.Module) -> dict[str, Any]:
    """The JSON-able spec ``{"name", "kwargs"}`` that :func:`build_net` turns back into ``net``.

    Raises ValueError for a module that is not one of :data:`NETS` or lacks ``config``.
    """
    net = _unwrap(net)
    name = type(net).__name__
    if NETS.get(name) is not type(net):
        raise ValueError(f"{name} is not a sciffusion backbone; known nets: {', '.join(sorted(NETS))}")
    config = getattr(net, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"{name} has no dict 'config' of constructor keywords")
    return {"name": name, "kwargs": dict(config)}
