r"""Hard constraints by projection (Projected Diffusion Models, Christopher et al. 2024).

A projection is any callable ``P(x: (B, *event)) -> (B, *event)`` onto a constraint set ``C``.
Built-ins are Euclidean projections onto convex sets: :class:`Box`, :class:`NonNegative`,
:class:`FixedTotal` (mass conservation) and :class:`LinearEquality` (``C x = b``).

:class:`ProjectedDenoiser` applies ``P`` to the Tweedie estimate after every denoiser call,
``D_C(x, sigma) = P(D(x, sigma))``, so each sampler step moves towards a feasible clean field and
the last step of every sampler in :mod:`sciffusion.diffusion` (which returns ``D`` at the final
level) returns a point of ``C``: samples satisfy the constraint to solver precision. Projecting
the clean estimate rather than the noisy iterate keeps the noise intact at high ``sigma`` (a
noisy state is far outside a bounded ``C``). Two facts follow:

* if the prior is supported in a convex ``C`` then ``D = E[x0 | x]`` is a convex combination of
  points of ``C``, so ``P(D) = D`` and the sampled distribution is unchanged;
* for affine constraints (:class:`FixedTotal`, :class:`LinearEquality`) the iterate can be projected
  as well (:func:`projected_step`, the PDM form), which again leaves a prior that satisfies the
  constraint unchanged because ``D`` then ignores the component normal to the constraint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sciffusion.diffusion.sample import forward_step, step_keywords, step_name
from sciffusion.physics.darcy import DarcyProjection  # noqa: F401  (re-exported; the PDE map lives with the solve)


class Box:
    """Clamp into ``[lower, upper]`` (scalars or tensors broadcastable to the event shape)."""

    def __init__(self, lower=None, upper=None):
        if lower is None and upper is None:
            raise ValueError("Box needs lower, upper or both")
        self.lower = None if lower is None else torch.as_tensor(lower)
        self.upper = None if upper is None else torch.as_tensor(upper)
        if self.lower is not None and self.upper is not None and bool((self.lower > self.upper).any()):
            raise ValueError("Box: lower must not exceed upper")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lo = None if self.lower is None else self.lower.to(x)
        hi = None if self.upper is None else self.upper.to(x)
        return torch.clamp(x, lo, hi)

    def violation(self, x: torch.Tensor) -> torch.Tensor:
        """Largest distance outside the box per sample, ``(B,)``."""
        v = torch.zeros_like(x)
        if self.lower is not None:
            v = torch.maximum(v, self.lower.to(x) - x)
        if self.upper is not None:
            v = torch.maximum(v, x - self.upper.to(x))
        return v.reshape(x.shape[0], -1).amax(1)


class NonNegative(Box):
    """Projection onto ``x >= 0``."""

    def __init__(self):
        super().__init__(lower=0.0)


class FixedTotal:
    r"""Projection onto ``{x : sum_i w_i x_i = total}`` (mass conservation):
    :math:`P(x) = x + w\,(\text{total} - w^T x)/\|w\|^2`.

    Args:
        total: the prescribed total, a scalar or one value per entry of the leading event axes.
        dims: event axes summed over (counted in the event, i.e. without the batch axis);
            default all.
        weights: cell weights ``w`` (e.g. areas), broadcastable to the summed axes; default 1.
    """

    def __init__(self, total, dims: tuple[int, ...] | None = None, weights=None):
        self.total = torch.as_tensor(total)
        self.dims = dims
        self.weights = None if weights is None else torch.as_tensor(weights)

    def _axes(self, x):
        return tuple(range(1, x.ndim)) if self.dims is None else tuple(d + 1 for d in self.dims)

    def _sum(self, x):
        """``(w^T x, |w|^2, w, total)``, the sums kept as axes and ``total`` shaped to broadcast against them."""
        w = x.new_ones(()) if self.weights is None else self.weights.to(x)
        axes = self._axes(x)
        s = (w * x).sum(axes, keepdim=True)
        total = self.total.to(x)
        total = total.reshape(total.shape + (1,) * (s.ndim - 1 - total.ndim)) if total.ndim else total
        return s, (w * w * torch.ones_like(x)).sum(axes, keepdim=True), w, total

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s, w2, w, total = self._sum(x)
        return x + w * (total - s) / w2

    def violation(self, x: torch.Tensor) -> torch.Tensor:
        s, _, _, total = self._sum(x)
        return (s - total).abs().reshape(x.shape[0], -1).amax(1)


class LinearEquality:
    r"""Projection onto ``{x : C vec(x) = b}``: :math:`P(x) = x - C^T (C C^T)^{-1} (C x - b)`.

    Args:
        matrix: ``C`` of shape ``(k, n)``, ``n = prod(event_shape)``, full row rank.
        rhs: ``b`` of shape ``(k,)``.
    """

    def __init__(self, matrix, rhs):
        c = torch.as_tensor(matrix, dtype=torch.float64)
        b = torch.as_tensor(rhs, dtype=torch.float64).reshape(-1)
        if c.ndim != 2 or b.shape != (c.shape[0],):
            raise ValueError(f"matrix must be (k, n) and rhs (k,), got {tuple(c.shape)} and {tuple(b.shape)}")
        gram = c @ c.T
        if torch.linalg.matrix_rank(gram) < c.shape[0]:
            raise ValueError("matrix must have full row rank (independent constraints)")
        self.c, self.b = c, b
        self.pinv = c.T @ torch.linalg.inv(gram)  # (n, k): C^T (C C^T)^-1

    def _residual(self, flat: torch.Tensor) -> torch.Tensor:
        """``C x - b`` per sample in float64, on ``flat``'s device."""
        return flat.to(torch.float64) @ self.c.T.to(flat.device) - self.b.to(flat.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        r = self._residual(flat)
        return (flat - (r @ self.pinv.T.to(x.device)).to(x.dtype)).reshape(x.shape)

    def violation(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(x.reshape(x.shape[0], -1)).abs().amax(1)


class ProjectedDenoiser:
    """``D_C(x, sigma) = P(D(x, sigma))``: a wrapper denoiser for any sampler (see the module)."""

    def __init__(self, denoiser, projection: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(projection):
            raise TypeError(f"projection must be callable, got {type(projection).__name__}")
        self.denoiser, self.projection = denoiser, projection

    def __getattr__(self, name):
        if name in ("denoiser", "projection"):
            raise AttributeError(name)
        return getattr(self.denoiser, name)

    def __call__(self, x, sigma, **cond):
        return self.projection(self.denoiser(x, sigma, **cond))


def projected_step(step_fn: Callable, projection: Callable) -> Callable:
    """A sampler step that projects the iterate after every step (PDM): ``x' = P(step(x))``;
    it takes the options of ``step_fn``."""

    def step(denoiser, x, sigma, sigma_next, **kwargs):
        return projection(forward_step(step_fn, denoiser, x, sigma, sigma_next, **kwargs))

    step.sampler_keywords = step_keywords(step_fn)
    step.__name__ = f"projected {step_name(step_fn)}"
    return step
