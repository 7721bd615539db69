"""Forward operators: ``torch.nn.Module`` maps from a field ``x: (B, *event_shape)`` to
observations ``A(x): (B, *obs_shape)``, and the Gaussian observation model around them.

Built-ins are linear (``linear = True``): :class:`Mask`, :class:`SparseSensors`,
:class:`Coarsen`, :class:`Linear`, and :class:`Compose` of linear maps. Any callable
(for example a differentiable PDE solve) becomes an operator through :func:`as_operator`;
gradient-based posterior methods only need it to be differentiable with torch autograd.

The observation model is ``y = A(x0) + n`` with independent Gaussian noise ``n_j ~ N(0, s_j^2)``
where ``s`` is a scalar, a per-channel std (one value per entry of the first observation axis)
or a per-point std of ``y``'s shape. A NaN in ``y`` marks a missing observation: it gets zero
weight in every likelihood, so it is ignored rather than propagated (:class:`Observation`).
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


def module_device(obj, default: str | torch.device = "cpu") -> torch.device:
    """The device of an ``nn.Module``'s first parameter or buffer (``default`` when it has none).

    Wrappers that keep the denoiser they wrap in ``.denoiser`` (the guidance and projection
    wrappers, an emulator) are looked through, so a wrapped CUDA model reports CUDA."""
    for _ in range(16):  # a bounded walk: wrappers of wrappers, never a cycle
        if isinstance(obj, nn.Module):
            for t in itertools.chain(obj.parameters(), obj.buffers()):
                return t.device
            break
        inner = getattr(obj, "denoiser", None)
        if inner is None or inner is obj:
            break
        obj = inner
    return torch.device(default)


class Operator(nn.Module):
    """Base class. Subclasses implement ``forward(x: (B, *event)) -> (B, *obs)``.

    ``linear`` says whether ``A`` is linear (then ``A^T`` is one autograd VJP and guidance can
    use ``A A^T``); ``gram_diag(event_shape)`` returns ``diag(A A^T)`` of shape ``obs_shape``.
    """

    linear: bool = False
    #: True when ``A A^T`` is diagonal (rows with disjoint support): PiGDM then solves exactly
    diagonal_gram: bool = False

    def gram_diag(self, event_shape: Sequence[int], dtype=torch.float64, device=None) -> torch.Tensor:
        """``diag(A J A^T)`` at ``x = 0`` (``J`` the Jacobian), one VJP per output, on ``device``
        (default: the operator's)."""
        device = module_device(self) if device is None else torch.device(device)
        x = torch.zeros((1, *event_shape), dtype=dtype, device=device, requires_grad=True)
        out = self(x)[0]
        m = out.numel()
        diag = torch.empty(m, dtype=dtype, device=device)
        for start in range(0, m, 1024):
            stop = min(m, start + 1024)
            grads = (torch.autograd.grad(out.reshape(-1)[j], x, retain_graph=True)[0] for j in range(start, stop))
            diag[start:stop] = torch.stack([(g**2).sum() for g in grads])
        return diag.reshape(out.shape)

    def __matmul__(self, other: "Operator") -> "Compose":
        """``A @ B`` is the operator ``x -> A(B(x))``."""
        return Compose(other, self)


class Mask(Operator):
    """Observe the entries where ``mask`` is True: ``x: (B, *event) -> (B, n_observed)``.

    Args:
        mask: boolean tensor of the event shape (``(C, H, W)``, ``(d,)``...).
    """

    linear = True
    diagonal_gram = True

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        self.register_buffer("mask", mask, persistent=False)
        self.event_shape = tuple(mask.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, the mask has shape {self.event_shape}")
        return x[:, self.mask]

    def gram_diag(self, event_shape, dtype=torch.float64, device=None) -> torch.Tensor:
        return torch.ones(int(self.mask.sum()), dtype=dtype, device=self.mask.device if device is None else device)


class SparseSensors(Operator):
    """Point sensors on a grid: ``x: (B, *lead, *grid) -> (B, *lead_selected, n_points)``.

    Args:
        grid_shape: the spatial shape (the last ``len(grid_shape)`` axes of the field).
        points: integer grid indices ``(n_points, len(grid_shape))``; or leave None and give
        num / fraction: the number or the fraction of grid points drawn at random (without
            replacement) from ``seed``; the draw depends on the seed only.
        channels: which entries of the axis before the grid to observe (e.g. ``[1]`` for ``u``
            of a joint ``(a, u)`` field); None keeps all leading axes.
    """

    linear = True

    def __init__(self, grid_shape: Sequence[int], *, points=None, num: int | None = None,
                 fraction: float | None = None, seed: int = 0, channels: Sequence[int] | None = None):
        super().__init__()
        self.grid_shape = tuple(int(g) for g in grid_shape)
        n_grid = math.prod(self.grid_shape)
        if points is None:
            if (num is None) == (fraction is None):
                raise ValueError("give exactly one of points, num or fraction")
            if num is None:
                if not 0 < fraction <= 1:
                    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
                num = max(1, round(fraction * n_grid))
            if not 0 < num <= n_grid:
                raise ValueError(f"num must be in 1..{n_grid}, got {num}")
            flat = torch.randperm(n_grid, generator=torch.Generator().manual_seed(int(seed)))[:num].sort().values
            points = torch.stack(torch.unravel_index(flat, self.grid_shape), dim=1)
        points = torch.as_tensor(points, dtype=torch.long).reshape(-1, len(self.grid_shape))
        if bool((points < 0).any()) or bool((points >= torch.tensor(self.grid_shape)).any()):
            raise ValueError(f"points must lie on the grid {self.grid_shape}")
        self.register_buffer("points", points, persistent=False)
        flat = torch.zeros((), dtype=torch.long)
        for axis, size in enumerate(self.grid_shape):
            flat = flat * size + points[:, axis]
        self.register_buffer("flat_index", flat, persistent=False)
        self.channels = None if channels is None else [int(c) for c in channels]
        self.diagonal_gram = len(torch.unique(flat)) == len(flat)  # distinct points

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.grid_shape)
        if tuple(x.shape[x.ndim - k:]) != self.grid_shape:
            raise ValueError(f"x has grid shape {tuple(x.shape[x.ndim - k:])}, the sensors expect {self.grid_shape}")
        if self.channels is not None:
            x = x[:, self.channels]
        return x.reshape(*x.shape[: x.ndim - k], -1)[..., self.flat_index]

    def gram_diag(self, event_shape, dtype=torch.float64, device=None) -> torch.Tensor:
        device = self.flat_index.device if device is None else device
        shape = self(torch.zeros((1, *event_shape), dtype=dtype, device=self.flat_index.device)).shape[1:]
        return torch.ones(shape, dtype=dtype, device=device)


class Coarsen(Operator):
    """Block means over the last ``len(factor)`` axes: each output cell is the mean of a
    ``factor[0] x factor[1] x ...`` block (the grid must divide evenly).

    Args:
        factor: an int (same factor on ``ndim`` axes) or one int per coarsened axis.
        ndim: how many trailing axes to coarsen when ``factor`` is an int (default 2).
    """

    linear = True
    diagonal_gram = True

    def __init__(self, factor: int | Sequence[int], ndim: int = 2):
        super().__init__()
        self.factor = (int(factor),) * ndim if isinstance(factor, int) else tuple(int(f) for f in factor)
        if any(f < 1 for f in self.factor):
            raise ValueError(f"factor must be positive, got {factor}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.factor)
        lead, grid = x.shape[: x.ndim - k], x.shape[x.ndim - k:]
        if len(grid) < k or any(g % f for g, f in zip(grid, self.factor)):
            raise ValueError(f"grid {tuple(grid)} is not divisible by the coarsening factor {self.factor}")
        shape = list(lead)
        for g, f in zip(grid, self.factor):
            shape += [g // f, f]
        blocks = x.reshape(shape)
        return blocks.mean(dim=tuple(range(len(lead) + 1, len(shape), 2)))

    def gram_diag(self, event_shape, dtype=torch.float64, device=None) -> torch.Tensor:
        shape = self(torch.zeros((1, *event_shape), dtype=dtype, device="meta")).shape[1:]
        return torch.full(shape, 1.0 / math.prod(self.factor), dtype=dtype, device=device)


class Linear(Operator):
    """A dense matrix on the flattened field: ``x: (B, *event) -> (B, m)``, ``y = M vec(x)``.

    Args:
        matrix: ``(m, n)`` with ``n = prod(event_shape)``.
    """

    linear = True

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        matrix = torch.as_tensor(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D (m, n), got shape {tuple(matrix.shape)}")
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.matrix.shape[1]:
            raise ValueError(f"x has {flat.shape[1]} values per sample, the matrix expects {self.matrix.shape[1]}")
        return flat @ self.matrix.to(flat.dtype).T

    def gram_diag(self, event_shape, dtype=torch.float64, device=None) -> torch.Tensor:
        return (self.matrix.to(dtype=dtype, device=device) ** 2).sum(1)


class Compose(Operator):
    """``Compose(A1, A2, ..., Ak)(x) = Ak(...A2(A1(x)))`` (applied in the order given, like
    ``nn.Sequential``). Linear when every part is."""

    def __init__(self, *operators):
        super().__init__()
        if not operators:
            raise ValueError("Compose needs at least one operator")
        self.parts = nn.ModuleList(as_operator(op) for op in operators)
        self.linear = all(p.linear for p in self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.parts:
            x = op(x)
        return x


class Function(Operator):
    """Wrap any callable ``fn(x: (B, *event)) -> (B, *obs)`` (e.g. a differentiable PDE solve).

    Args:
        fn: the forward model.
        linear: declare ``fn`` linear (enables the exact ``A A^T`` of PiGDM/MMPS); default False,
            in which case guidance linearises ``fn`` at the current Tweedie estimate.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], linear: bool = False):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"operator must be an nn.Module or a callable, got {type(fn).__name__}")
        self.fn = fn
        self.linear = bool(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def as_operator(op) -> Operator:
    """An :class:`Operator` from an operator, an ``nn.Module`` or any callable."""
    if isinstance(op, Operator):
        return op
    return Function(op, linear=isinstance(op, nn.Module) and bool(getattr(op, "linear", False)))


class Observation:
    """``y = A(x0) + n`` with per-entry noise std; NaNs in ``y`` are missing observations.

    Args:
        operator: the forward operator (anything :func:`as_operator` accepts).
        y: observations of shape ``obs_shape`` (one observation shared by all samples).
        noise_std: scalar, ``(obs_shape[0],)`` per channel, or ``obs_shape`` per point.
        event_shape: the field's shape; ``y`` is checked against ``A(zeros(event_shape))``.
        positive: require ``noise_std > 0`` at observed entries (methods that divide by it).
        device: where the tensors live (default: the operator's device). An operator holding
            tensors elsewhere is copied there (the caller's stays where it is); a plain callable
            must accept fields on that device.

    Attributes ``y`` (NaN replaced by 0), ``observed`` (bool), ``std`` and ``var`` (full
    ``obs_shape``), ``weight = observed / var`` (0 at missing entries), ``device``.
    """

    def __init__(self, operator, y, noise_std, event_shape: Sequence[int], *, positive: bool = True,
                 dtype: torch.dtype = torch.float64, device=None):
        op = as_operator(operator)
        self.device = module_device(op) if device is None else torch.device(device)
        if module_device(op, default=self.device) != self.device:  # a copy: the caller's operator stays put
            op = copy.deepcopy(op).to(self.device)
        self.operator = op
        self.event_shape = tuple(int(s) for s in event_shape)
        y = torch.as_tensor(y, dtype=dtype).to(self.device)
        with torch.no_grad():
            probe = self.operator(torch.zeros((1, *self.event_shape), dtype=dtype, device=self.device))
        obs_shape = tuple(probe.shape[1:])
        if tuple(y.shape) != obs_shape:
            raise ValueError(f"y has shape {tuple(y.shape)} but the operator maps event shape "
                             f"{self.event_shape} to observations of shape {obs_shape}")
        self.observed = ~torch.isnan(y)
        if not bool(self.observed.any()):
            raise ValueError("y is entirely NaN (missing): nothing to condition on")
        self.y = torch.where(self.observed, y, 0.0)
        std = torch.as_tensor(noise_std, dtype=dtype).to(self.device)
        if std.ndim == 1 and y.ndim > 1 and std.shape[0] == y.shape[0]:
            std = std.reshape((-1,) + (1,) * (y.ndim - 1))  # one std per channel (first axis)
        try:
            std = torch.broadcast_to(std, y.shape).clone()
        except RuntimeError:
            raise ValueError(f"noise_std of shape {tuple(torch.as_tensor(noise_std).shape)} fits neither a scalar, "
                             f"one std per channel ({y.shape[0] if y.ndim else 1},) nor y's shape {tuple(y.shape)}") from None
        bad = ~torch.isfinite(std) | (std < 0)
        if positive:
            bad = bad | (std == 0)
        if bool((bad & self.observed).any()):
            need = "positive" if positive else "non-negative"
            raise ValueError(f"noise_std must be finite and {need} at every observed entry for this method; "
                             f"got min {float(std[self.observed].min()):g}")
        self.std = torch.where(self.observed, std, 1.0)
        self.var = self.std**2
        self.weight = torch.where(self.observed, 1.0 / self.var.clamp_min(1e-300), 0.0)
        self.obs_shape = obs_shape
        self.num_observed = int(self.observed.sum())

    def gram_diag(self, dtype=torch.float64) -> torch.Tensor:
        """``diag(A A^T)`` (``obs_shape``) on the observation's device; ones for a nonlinear operator."""
        op = self.operator
        if not op.linear:
            return torch.ones(self.obs_shape, dtype=dtype, device=self.device)
        if "device" in inspect.signature(op.gram_diag).parameters:
            return op.gram_diag(self.event_shape, dtype=dtype, device=self.device)
        return op.gram_diag(self.event_shape, dtype=dtype).to(self.device)  # a user operator without device=

    def residual(self, x0: torch.Tensor) -> torch.Tensor:
        """``(y - A(x0))`` with 0 at missing entries, ``(B, *obs_shape)``."""
        return torch.where(self.observed, self.y.to(x0.dtype) - self.operator(x0), 0.0)

    def log_likelihood(self, x0: torch.Tensor, extra_var: torch.Tensor | float = 0.0) -> torch.Tensor:
        """``log N(y; A(x0), diag(var + extra_var))`` over observed entries, ``(B,)``.

        ``extra_var``: a scalar, ``obs_shape`` or ``(B, *obs_shape)`` variance added to the noise."""
        r = self.residual(x0)
        v = self.var.to(x0.dtype) + torch.as_tensor(extra_var, dtype=x0.dtype, device=x0.device)
        v = torch.broadcast_to(v, r.shape)
        obs = self.observed.expand_as(r)
        terms = torch.where(obs, r**2 / v + torch.log(2 * math.pi * v), 0.0)
        return -0.5 * terms.reshape(r.shape[0], -1).sum(1)


def require_differentiable(operator: Operator, event_shape, method: str, dtype=torch.float64, device=None) -> None:
    """Raise a TypeError naming ``operator`` if autograd cannot differentiate it."""
    device = module_device(operator) if device is None else device
    x = torch.zeros((1, *event_shape), dtype=dtype, device=device, requires_grad=True)
    try:
        with torch.enable_grad():
            out = operator(x)
    except (RuntimeError, TypeError) as exc:  # e.g. calling .numpy() on a tensor that requires grad
        raise TypeError(f"operator is not differentiable with torch autograd ({exc}); method {method!r} needs "
                        "its gradient: write the forward model in torch ops, or use method='projected'") from exc
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise TypeError(f"operator is not differentiable: its output carries no gradient w.r.t. the field, and "
                        f"method {method!r} needs one (write the forward model in torch ops)")
