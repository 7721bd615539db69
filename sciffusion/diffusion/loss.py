"""The EDM denoising loss (Karras et al. 2022, sec. 5), with channel weights, a missing-data mask
and optional physics-residual and ensemble-CRPS terms."""

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
    crps_weight: float = 0.0,
    crps_members: int = 2,
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
        crps_weight: weight ``c`` of an ensemble-CRPS term, as in CRPS-trained generative models
            (Pacchiardi et al. 2024; Lang et al. 2024, AIFS-CRPS). Each example's ``x0`` is noised
            at its one ``sigma`` with ``crps_members`` independent ``eps`` (the first is the MSE
            term's, the others are drawn from ``generator`` after it, as one
            ``(crps_members - 1, *x0.shape)`` draw) and denoised in one batched call; the loss
            gains ``c * mean_points(CRPS_fair(D_1..D_K; x0))`` per sample, the mean taken with the
            mask and channel weights of the MSE term and without the ``lambda(sigma)`` weight.
            0 (the default) disables the term and draws nothing, leaving the loss unchanged.
        crps_members: ``K >= 2`` denoised estimates per example for that term (each extra one
            costs one more denoiser evaluation of the batch).

    Training with a CRPS term through :class:`~sciffusion.training.Trainer` goes through its
    ``loss_fn`` hook, e.g. ``loss_fn=lambda model, batch, g: edm_loss(model, batch["x"],
    cond=batch.get("cond"), generator=g, crps_weight=0.1)``.
    """
    if int(crps_members) != crps_members or crps_members < 2:
        raise ValueError(f"crps_members must be an integer >= 2 (the fair CRPS needs two members), got {crps_members!r}")
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
    w = None
    if channel_weights is not None:
        w = torch.as_tensor(channel_weights, dtype=x0.dtype, device=x0.device)
        if x0.ndim < 2 or w.shape != (x0.shape[1],):
            raise ValueError(f"channel_weights must have shape ({x0.shape[1] if x0.ndim > 1 else '?'},), got {tuple(w.shape)}")
        w = w.reshape((1, -1) + (1,) * (x0.ndim - 2))
    dims = tuple(range(1, x0.ndim))

    def point_mean(err):  # per-sample mean over points, channel-weighted, masked points left out
        err = err if w is None else err * w
        if mask is not None:
            return (err * mask).sum(dims) / mask.sum(dims).clamp_min(1)
        return err.mean(dims)

    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    per_sample = weight * point_mean((x0_hat - x0) ** 2)
    if residual is not None and residual_weight:
        rho = residual(x0_hat)
        per_sample = per_sample + residual_weight * (rho**2).reshape(b, -1).mean(1).to(per_sample.dtype)
    if crps_weight:
        crps = _member_crps(denoiser, x0, x0_hat, sigma, cond, int(crps_members), generator)
        per_sample = per_sample + crps_weight * point_mean(crps).to(per_sample.dtype)
    return per_sample.mean() if reduce else per_sample


def _member_crps(denoiser, x0, x0_hat, sigma, cond, members, generator):
    """Pointwise fair CRPS (shape of ``x0``) of ``x0_hat`` and ``members - 1`` more estimates
    ``D(x0 + sigma eps_k, sigma)`` at fresh ``eps_k`` (one draw from ``generator``, one batched call)."""
    from sciffusion.metrics.torch_scores import crps_ensemble

    k, b = members - 1, x0.shape[0]
    eps = torch.randn((k, *x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    x = (x0 + broadcast_like(sigma, x0) * eps).reshape(k * b, *x0.shape[1:])
    cond_k = None if cond is None else cond.repeat(k, *([1] * (cond.ndim - 1)))
    extra = denoiser(x, sigma.repeat(k), cond=cond_k).reshape(k, *x0.shape)
    ens = torch.cat([x0_hat.unsqueeze(0), extra.to(x0_hat.dtype)])
    return crps_ensemble(ens, x0.to(ens.dtype), member_dim=0, fair=True)
