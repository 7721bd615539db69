"""The EDM denoising loss (Karras et al. 2022, sec. 5), with channel weights and a missing-data mask."""

from __future__ import annotations

import torch

from sciffusion.diffusion.denoiser import broadcast_like


def draw_noise(shape, *, p_mean: float = -1.2, p_std: float = 1.2, generator=None, device=None, dtype=None):
    """EDM's training noise: ``sigma`` with ``ln sigma ~ N(p_mean, p_std^2)`` per row (``(B,)``) and
    ``eps ~ N(0, I)`` of ``shape``, drawn in this order from ``generator``."""
    n = torch.randn(shape[0], generator=generator, device=device, dtype=dtype)
    eps = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return (p_mean + p_std * n).exp(), eps


def edm_loss(
    denoiser,
    x0: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    channel_weights: torch.Tensor | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float | None = None,
    generator: torch.Generator | None = None,
    reduce: bool = True,
    residual=None,
    residual_weight: float = 0.0,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""EDM training loss.

    .. math::
        \mathcal L = \mathbb E_{\ln\sigma\sim\mathcal N(P_{mean}, P_{std}^2),\ \epsilon}
        \Big[\lambda(\sigma)\, \frac{\sum_i m_i w_{c(i)} (D(x_0+\sigma\epsilon, \sigma) - x_0)_i^2}
        {\sum_i m_i}\Big],\qquad \lambda(\sigma) = \frac{\sigma^2+\sigma_d^2}{(\sigma\sigma_d)^2}

    Args:
        denoiser: ``denoiser(x, sigma, cond=...) -> x0_hat``.
        x0: clean targets ``(B, C, *grid)`` (or ``(B, D)``); values at masked points are ignored.
        cond: conditioning passed to the denoiser.
        mask: 1 where ``x0`` is observed, 0 where missing; same shape as ``x0`` (or broadcastable).
            Missing points contribute neither to the loss nor to its normaliser.
        channel_weights: ``(C,)`` weights per channel (axis 1).
        p_mean, p_std: log-normal noise-level distribution (EDM: -1.2, 1.2).
        sigma_data: for the weighting; defaults to ``denoiser.sigma_data`` or 1.
        generator: RNG for sigma and eps (makes training exactly reproducible).
        reduce: return the batch mean (scalar) rather than per-sample losses ``(B,)``.
        residual: physics-informed term (PIDM, Bastek et al. 2025): a differentiable
            ``residual(x0_hat) -> (B, ...)`` of the Tweedie estimate ``x0_hat = D(x, sigma)``
            that vanishes on admissible fields (e.g. :class:`sciffusion.inverse.DarcyResidual`).
            The loss gains ``residual_weight * mean(residual(x0_hat)^2)`` per sample, PIDM's
            ``c * ||R(x0_hat)||^2`` with the "mean" estimate and a constant variance.
        residual_weight: ``c`` (PIDM uses 1e-3 on its Darcy task); 0 disables the term.
        noise: ``(sigma, eps)`` drawn by the caller (``(B,)`` and ``x0``'s shape) instead of from
            ``generator`` — how DDP training gives each rank its rows of one global-batch draw.
    """
    if sigma_data is None:
        sigma_data = float(getattr(denoiser, "sigma_data", 1.0))
    b = x0.shape[0]
    if noise is None:
        sigma, eps = draw_noise(x0.shape, p_mean=p_mean, p_std=p_std, generator=generator,
                                device=x0.device, dtype=x0.dtype)
    else:
        sigma, eps = noise
        if sigma.shape != (b,) or eps.shape != x0.shape:
            raise ValueError(f"noise=(sigma, eps) must have shapes ({b},) and {tuple(x0.shape)}; "
                             f"got {tuple(sigma.shape)} and {tuple(eps.shape)}")
    if mask is not None:
        mask = torch.broadcast_to(mask.to(x0.dtype), x0.shape)
        x0 = torch.where(mask > 0, x0, torch.zeros_like(x0))
    x = x0 + broadcast_like(sigma, x0) * eps
    x0_hat = denoiser(x, sigma, cond=cond)
    err = (x0_hat - x0) ** 2
    if channel_weights is not None:
        w = torch.as_tensor(channel_weights, dtype=x0.dtype, device=x0.device)
        if x0.ndim < 2 or w.shape != (x0.shape[1],):
            raise ValueError(f"channel_weights must have shape ({x0.shape[1] if x0.ndim > 1 else '?'},), got {tuple(w.shape)}")
        err = err * w.reshape((1, -1) + (1,) * (x0.ndim - 2))
    dims = tuple(range(1, x0.ndim))
    if mask is not None:
        per_sample = (err * mask).sum(dims) / mask.sum(dims).clamp_min(1)
    else:
        per_sample = err.mean(dims)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    per_sample = weight * per_sample
    if residual is not None and residual_weight:
        rho = residual(x0_hat)
        per_sample = per_sample + residual_weight * (rho**2).reshape(b, -1).mean(1).to(per_sample.dtype)
    return per_sample.mean() if reduce else per_sample
