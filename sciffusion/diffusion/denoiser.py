"""EDM preconditioning: turn a raw backbone into a denoiser ``D(x, sigma) ~ E[x0 | x]``."""

from __future__ import annotations

import torch
from torch import nn


def as_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Noise level(s) as a tensor of shape ``(B,)`` in ``x``'s dtype and device."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape (B,) = ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


def broadcast_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``x``."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


class Denoiser(nn.Module):
    r"""EDM-preconditioned denoiser (Karras et al. 2022, table 1).

    .. math::
        D(x, \sigma) = c_{skip}(\sigma)\, x + c_{out}(\sigma)\,
        F\big(c_{in}(\sigma)\, x,\ c_{noise}(\sigma),\ \text{cond}\big)

    with :math:`c_{skip} = \sigma_d^2/(\sigma^2+\sigma_d^2)`,
    :math:`c_{out} = \sigma\sigma_d/\sqrt{\sigma^2+\sigma_d^2}`,
    :math:`c_{in} = 1/\sqrt{\sigma^2+\sigma_d^2}` and :math:`c_{noise} = \tfrac14\ln\sigma`.

    Args:
        net: backbone ``net(x, c_noise, cond=None) -> Tensor`` of ``x``'s shape.
        sigma_data: standard deviation of the (normalised) data. sciffusion's data layer
            normalises every variable to unit variance, hence the default 1.0 (EDM uses 0.5
            for images in [-1, 1]).

    Call as ``denoiser(x, sigma, cond=None)`` with ``x: (B, *event_shape)`` and ``sigma``
    a scalar or ``(B,)``; returns the estimate of ``E[x0 | x]`` of ``x``'s shape.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 1.0):
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return ``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma``."""
        sd2 = self.sigma_data**2
        s2 = sigma**2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1 / (s2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        sigma = as_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        f = self.net(broadcast_like(c_in, x) * x, c_noise, cond=cond, **kwargs)
        return broadcast_like(c_skip, x) * x + broadcast_like(c_out, x) * f.to(x.dtype)
