"""Speed options for any denoiser: bf16 autocast, channels-last memory format, ``torch.compile``.

:func:`accelerate` wraps a denoiser (``denoiser(x, sigma, **cond) -> x0_hat``) and returns one
with the same signature, so it composes with every sampler and every guidance wrapper:

    fast = accelerate(emulator_denoiser)              # "auto": bf16 on CUDA, unchanged on CPU
    members = sample(fast, shape, cond=cond, steps=18)

``"auto"`` resolves to what is fastest *and still exact* on the device: on CPU the denoiser is
returned as it is (float32 autocast is slower there and bf16 would change the numbers); on CUDA
bf16 autocast is on (tensor cores), while channels-last and ``torch.compile`` stay opt-in, because
whether they help depends on the card and the model (``benchmarks/gpu.py`` measures both).
The wrapper always hands back ``x``'s dtype and a contiguous tensor, so the sampler's arithmetic
(the ODE/SDE update) stays in float32 or float64 whatever the network runs in.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PRECISIONS = (None, "fp32", "bf16", "auto")


def _device_of(denoiser, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(denoiser, nn.Module):
        for p in denoiser.parameters():
            return p.device
    return torch.device("cpu")


def resolve(precision="auto", channels_last="auto", compile="auto", device="cpu") -> dict:
    """The concrete settings ``{"precision", "channels_last", "compile"}`` for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, value in (("channels_last", channels_last), ("compile", compile)):
        if value not in (True, False, "auto"):
            raise ValueError(f"{name} must be True, False or 'auto', got {value!r}")
    cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        precision = "bf16" if cuda else None
    return {"precision": None if precision == "fp32" else precision,
            "channels_last": bool(channels_last is True),
            "compile": bool(compile is True)}


class Accelerated(nn.Module):
    """A denoiser run under bf16 autocast / channels-last / ``torch.compile`` (see module docstring).

    Args:
        denoiser: any denoiser callable (an :class:`~sciffusion.diffusion.Denoiser` is compiled
            at its backbone ``net``, so the EDM preconditioning stays in full precision).
        precision: ``"bf16"`` for bfloat16 autocast, None/``"fp32"`` for none.
        channels_last: run 4-D inputs in channels-last memory format (the module's 4-D weights are
            converted in place: same values, another layout).
        compile: ``torch.compile`` the backbone (static shapes).
        device: where autocast applies (default: the denoiser's parameters' device).
    """

    def __init__(self, denoiser, *, precision=None, channels_last: bool = False, compile: bool = False, device=None):
        super().__init__()
        if precision not in PRECISIONS or precision == "auto":
            raise ValueError(f"precision must be None, 'fp32' or 'bf16' here, got {precision!r} (use accelerate() for 'auto')")
        self.inner = denoiser
        self.device_type = _device_of(denoiser, device).type
        self.precision = None if precision == "fp32" else precision
        self.channels_last = bool(channels_last)
        self.sigma_data = getattr(denoiser, "sigma_data", None)
        if self.channels_last and isinstance(denoiser, nn.Module):
            denoiser.to(memory_format=torch.channels_last)
        if compile:  # the caller's denoiser is left as it was: compile a shallow copy's backbone
            net = getattr(denoiser, "net", None)
            if isinstance(denoiser, nn.Module) and isinstance(net, nn.Module):
                inner = copy.copy(denoiser)
                inner._modules = dict(denoiser._modules)
                inner.net = torch.compile(net, dynamic=False)
                self.inner = inner
            else:
                self.inner = torch.compile(denoiser, dynamic=False)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        dtype = x.dtype
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
            cond = {k: v.contiguous(memory_format=torch.channels_last)
                    if torch.is_tensor(v) and v.ndim == 4 else v for k, v in cond.items()}
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.inner(x, sigma, **cond)
        return out.to(dtype).contiguous()


def accelerate(denoiser, *, precision="auto", channels_last="auto", compile="auto", device=None):
    """Return ``denoiser`` with the speed options that :func:`resolve` picks for its device.

    When nothing is switched on (always the case on CPU with the defaults), the denoiser itself is
    returned, so the default path is bit-for-bit the plain one.
    """
    dev = _device_of(denoiser, device)
    opts = resolve(precision, channels_last, compile, dev)
    if opts["precision"] is None and not opts["channels_last"] and not opts["compile"]:
        return denoiser
    return Accelerated(denoiser, device=dev, **opts)
