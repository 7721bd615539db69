"""A 1-D periodic convolutional backbone for vector states on a ring (e.g. Lorenz-96).

Backbone protocol (see :class:`sciffusion.diffusion.Denoiser`)::

    net(x, c_noise, cond=None) -> Tensor
        x:       (B, C, K)   noisy state on K periodic sites, already scaled by c_in
        c_noise: (B,)        noise-level code (EDM: log(sigma) / 4); a scalar is broadcast
        cond:    (B, Cc, K)  conditioning states (e.g. the previous state), or None
        returns  (B, C_out, K)

Every convolution pads circularly and there is no down-sampling, so the net is exactly
equivariant to cyclic shifts of the sites for any shift (the Lorenz-96 symmetry).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .unet import NoiseEmbedding, _concat_cond, _norm, broadcast_noise


class ResBlock1d(nn.Module):
    """GroupNorm-SiLU-circular conv twice with FiLM from the noise embedding, residual.

    x: (B, width, K), emb: (B, emb_dim) -> (B, width, K).
    """

    def __init__(self, width: int, emb_dim: int, kernel_size: int, dilation: int,
                 groups: int, dropout: float):
        super().__init__()
        pad = dilation * (kernel_size // 2)
        self.norm1 = _norm(width, groups)
        self.conv1 = nn.Conv1d(width, width, kernel_size, padding=pad, dilation=dilation,
                               padding_mode="circular")
        self.film = nn.Linear(emb_dim, 2 * width)
        self.norm2 = _norm(width, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2,
                               padding_mode="circular")

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(self.dropout(F.silu(h)))


class PeriodicConv1d(nn.Module):
    """Residual circular-convolution net for (B, C, K) states on a periodic 1-D lattice.

    Args:
        in_channels: C, channels of the noisy state (1 for Lorenz-96).
        out_channels: output channels (default ``in_channels``).
        cond_channels: Cc, conditioning channels concatenated to x (0 = none).
        width: hidden channels.
        n_blocks: residual blocks.
        kernel_size: odd kernel size of every convolution.
        dilations: dilation of the first conv of each block, cycled over the blocks
            (default ``[1, 2, 4]``), so the receptive field grows quickly with depth.
        emb_dim: noise-embedding width (default ``2 * width``).
        fourier_scale: std of the random Fourier frequencies of the noise embedding.
        groups: maximum GroupNorm group count.
        dropout: dropout rate inside residual blocks.

    Forward: ``x (B, C, K), c_noise (B,), cond (B, Cc, K) | None -> (B, C_out, K)``.
    The final convolution is zero-initialised, so a fresh net returns 0.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None,
                 cond_channels: int = 0, width: int = 64, n_blocks: int = 4,
                 kernel_size: int = 5, dilations: Sequence[int] | None = None,
                 emb_dim: int | None = None, fourier_scale: float = 16.0, groups: int = 8,
                 dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for a centred periodic conv; got {kernel_size}")
        out_channels = in_channels if out_channels is None else out_channels
        dilations = [1, 2, 4] if dilations is None else [int(d) for d in dilations]
        emb_dim = 2 * width if emb_dim is None else emb_dim
        self.config = dict(in_channels=in_channels, out_channels=out_channels,
                           cond_channels=cond_channels, width=width, n_blocks=n_blocks,
                           kernel_size=kernel_size, dilations=dilations, emb_dim=emb_dim,
                           fourier_scale=fourier_scale, groups=groups, dropout=dropout)
        self.embed = NoiseEmbedding(width, emb_dim, fourier_scale)
        self.conv_in = nn.Conv1d(in_channels + cond_channels, width, kernel_size,
                                 padding=kernel_size // 2, padding_mode="circular")
        self.blocks = nn.ModuleList(
            ResBlock1d(width, emb_dim, kernel_size, dilations[i % len(dilations)], groups, dropout)
            for i in range(n_blocks))
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv1d(width, out_channels, kernel_size, padding=kernel_size // 2,
                                  padding_mode="circular")
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """x: (B, C, K), c_noise: (B,), cond: (B, Cc, K) or None -> (B, C_out, K)."""
        if x.ndim != 3:
            raise ValueError(f"PeriodicConv1d expects x of shape (B, C, K); got {tuple(x.shape)}")
        reach = max(self.config["dilations"][:self.config["n_blocks"]] or [1]) * (
            self.config["kernel_size"] // 2)
        if x.shape[-1] < reach:
            raise ValueError(f"PeriodicConv1d: K = {x.shape[-1]} sites is fewer than the circular "
                             f"padding {reach} (dilation x kernel_size // 2); use smaller "
                             f"dilations or kernel_size")
        x = _concat_cond(x, cond, self.config["cond_channels"], "PeriodicConv1d")
        emb = self.embed(broadcast_noise(c_noise, x.shape[0], x))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
