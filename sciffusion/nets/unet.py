"""A 2-D U-Net backbone for gridded fields on periodic or bounded domains.

The net follows the backbone protocol used by :class:`sciffusion.diffusion.Denoiser`::

    net(x, c_noise, cond=None) -> Tensor
        x:       (B, C, H, W)   noisy field, already scaled by c_in
        c_noise: (B,)           noise-level code (EDM: log(sigma) / 4); a scalar is broadcast
        cond:    (B, Cc, H, W)  conditioning fields, concatenated to x inside the net, or None
        returns  (B, C_out, H, W)

Padding is chosen per axis: ``"circular"`` for a periodic axis (longitude, a doubly
periodic PDE box), ``"zeros"`` for a bounded one (latitude, a walled domain). With circular
padding on an axis, rolling the input along it by a multiple of ``2**(levels - 1)`` rolls the
output by the same amount (every layer is a padded convolution, a pointwise map, a global
normalisation or global attention, all of which commute with such rolls).

The noise level enters through random Fourier features (Tancik et al. 2020; EDM, Karras et al.
2022) and an MLP, and modulates every residual block through an adaptive scale and shift of
its normalised activations (FiLM). The final convolution is zero-initialised, so a fresh net
returns 0 and a fresh EDM denoiser returns ``c_skip * x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDING_MODES = {"circular": "circular", "zeros": "constant", "reflect": "reflect",
                 "replicate": "replicate"}


def _group_count(channels: int, groups: int) -> int:
    """Largest group count <= ``groups`` that divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class _ChannelsLastGrad(torch.autograd.Function):
    """The identity, whose backward hands on the gradient in channels-last layout."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def channels_last_grad(x: Tensor) -> Tensor:
    """``x``, with its gradient made channels-last in the backward pass when ``x`` is channels-last.

    GroupNorm's backward (eager, and inductor's decomposition of it) writes the input gradient in
    the ``(B, G, C/G * H * W)`` order, i.e. NCHW; that gradient is the ``grad_output`` of the
    convolution before the norm, and cuDNN's channels-last backward copies it to NHWC first (a
    separate transpose of every activation gradient). Asking for the layout here lets the kernel
    that produces the gradient write it channels-last directly. The forward value is ``x`` itself;
    NCHW tensors (the CPU default) pass untouched. Measured on an H200 (docs/scale.md): the compiled
    bf16 256x256 training step 8.8% faster (249 -> 271 TFLOP/s), the copies inside the convolution
    backward 23 -> 15 ms of the step.
    """
    if x.dim() == 4 and x.requires_grad and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return _ChannelsLastGrad.apply(x)
    return x


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that stays in bf16/fp16 under autocast.

    Autocast runs group_norm in float32, which doubles the bytes moved by every normalisation
    (a cast in, a float32 output, a cast back at the next convolution) - on a GPU those passes,
    not the convolutions, bound a U-Net step. The native kernels accumulate the statistics in
    float32 for half-precision inputs, so normalising in the input's dtype is as accurate.
    float32 inputs take the ordinary path; the state dict is that of ``nn.GroupNorm``.
    """

    # class switch, on by default: see channels_last_grad(); measured in benchmarks/gpu.py's _clgrad variants
    channels_last_grad = True

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last_grad:
            x = channels_last_grad(x)
        if x.dtype not in (torch.bfloat16, torch.float16) or not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            w = None if self.weight is None else self.weight.to(x.dtype)
            b = None if self.bias is None else self.bias.to(x.dtype)
            return F.group_norm(x, self.num_groups, w, b, self.eps)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return GroupNorm(_group_count(channels, groups), channels, eps=1e-6)


def _padding_pair(padding) -> tuple[str, str]:
    """Normalise ``padding`` to a (H-mode, W-mode) pair of sciffusion mode names."""
    modes = (padding, padding) if isinstance(padding, str) else tuple(padding)
    if len(modes) != 2:
        raise ValueError(f"padding must be one mode or a pair (H, W); got {padding!r}")
    for m in modes:
        if m not in PADDING_MODES:
            raise ValueError(f"unknown padding mode {m!r}; choose from {sorted(PADDING_MODES)}")
    return modes  # type: ignore[return-value]


class PadConv2d(nn.Module):
    """3x3-style convolution with its own padding mode on each axis.

    x: (B, C_in, H, W) -> (B, C_out, H // stride, W // stride).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
                 padding: tuple[str, str] = ("zeros", "zeros")):
        super().__init__()
        self.pad = kernel_size // 2
        self.modes = tuple(PADDING_MODES[m] for m in padding)
        # zero padding on both axes is the convolution's own (no padded copy of the input);
        # one mode on both axes is a single F.pad (one copy, not two)
        self.builtin = self.modes == ("constant", "constant")
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride,
                              padding=self.pad if self.builtin else 0)

    # class switch, on by default: the output's gradient made channels-last (channels_last_grad(); gpu.py _clgradconv)
    channels_last_grad = True

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last_grad:
            return channels_last_grad(self._forward(x))
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        p = self.pad
        if p and not self.builtin:
            if self.modes[0] == self.modes[1]:
                x = F.pad(x, (p, p, p, p), mode=self.modes[0])
            else:
                x = F.pad(x, (p, p, 0, 0), mode=self.modes[1])  # W axis
                x = F.pad(x, (0, 0, p, p), mode=self.modes[0])  # H axis
        return self.conv(x)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar noise code.

    c: (B,) -> (B, dim) = [cos(2 pi f c), sin(2 pi f c)], f ~ N(0, scale^2), fixed at init
    from a fixed seed (so a net rebuilt from its config has the same features) and stored as
    a buffer (so they travel in the state dict).
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"Fourier embedding dim must be even; got {dim}")
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)

    def forward(self, c: Tensor) -> Tensor:
        arg = 2 * math.pi * c[:, None].to(self.freqs.dtype) * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """c_noise (B,) -> embedding (B, emb_dim): Fourier features followed by a 2-layer MLP."""

    def __init__(self, fourier_dim: int, emb_dim: int, scale: float):
        super().__init__()
        self.fourier = FourierEmbedding(fourier_dim, scale)
        self.mlp = nn.Sequential(nn.Linear(fourier_dim, emb_dim), nn.SiLU(),
                                 nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(self.fourier(c_noise))


def broadcast_noise(c_noise: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """Return c_noise as a (B,) tensor on ``like``'s device (scalars broadcast), in at least
    float32 so half-precision inputs do not blur the Fourier phases."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    c = torch.as_tensor(c_noise, device=like.device).to(dtype).reshape(-1)
    if c.numel() == 1:
        return c.expand(batch)
    if c.numel() != batch:
        raise ValueError(f"c_noise has {c.numel()} entries for a batch of {batch}")
    return c


class ResBlock2d(nn.Module):
    """GroupNorm-SiLU-conv twice, FiLM from the noise embedding, residual connection.

    x: (B, cin, H, W), emb: (B, emb_dim) -> (B, cout, H, W).
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, padding: tuple[str, str],
                 groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = PadConv2d(cin, cout, 3, padding=padding)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = PadConv2d(cout, cout, 3, padding=padding)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all grid points, residual. x: (B, C, H, W) -> same."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels are not divisible by "
                             f"num_heads={num_heads}")
        self.heads = num_heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))  # (B, heads, HW, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNet2d(nn.Module):
    """U-Net denoiser backbone for fields on a 2-D grid.

    Args:
        in_channels: C, channels of the noisy field x.
        out_channels: channels of the output (default: ``in_channels``).
        cond_channels: Cc, channels of the conditioning fields concatenated to x (0 = none).
        channels: width of each resolution level; ``len(channels)`` levels, each after the
            first halving H and W, so H and W must be divisible by ``2**(len(channels)-1)``.
        blocks_per_level: residual blocks per level in the encoder (decoder uses the same).
        attention_levels: indices of levels (0 = full resolution; negative counts from the
            lowest) that get self-attention; the bottleneck always has it when this is
            non-empty. Default: the lowest level only.
        padding: ``"circular"``, ``"zeros"``, ``"reflect"`` or ``"replicate"``, or a pair
            ``(mode_H, mode_W)``, e.g. ``("zeros", "circular")`` for a lat-lon grid.
        emb_dim: width of the noise embedding (default ``4 * channels[0]``).
        fourier_scale: std of the random Fourier frequencies of the noise embedding.
        num_heads: attention heads (must divide the attention levels' widths).
        groups: maximum GroupNorm group count.
        dropout: dropout rate inside residual blocks.
        fit_grid: what to do with a grid whose H or W is not divisible by the down-sampling
            factor: ``"error"`` (refuse, naming the size and factor) or ``"pad"`` (pad up to the
            next multiple - periodically along circular axes, by reflection otherwise - and crop
            the output back, so e.g. an 18 x 432 OSTIA grid works with any depth).

    Forward: ``x (B, C, H, W), c_noise (B,), cond (B, Cc, H, W) | None -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None,
                 cond_channels: int = 0, channels: Sequence[int] = (32, 64, 128),
                 blocks_per_level: int = 2, attention_levels: Sequence[int] | None = None,
                 padding: str | Sequence[str] = "zeros", emb_dim: int | None = None,
                 fourier_scale: float = 16.0, num_heads: int = 4, groups: int = 8,
                 dropout: float = 0.0, fit_grid: str = "error"):
        super().__init__()
        if fit_grid not in ("error", "pad"):
            raise ValueError(f"fit_grid must be 'error' or 'pad'; got {fit_grid!r}")
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths; got {channels}")
        levels = len(channels)
        out_channels = in_channels if out_channels is None else out_channels
        attention_levels = [levels - 1] if attention_levels is None else list(attention_levels)
        attn = {a % levels for a in attention_levels}
        pad = _padding_pair(padding)
        emb_dim = 4 * channels[0] if emb_dim is None else emb_dim
        self.config = dict(in_channels=in_channels, out_channels=out_channels,
                           cond_channels=cond_channels, channels=channels,
                           blocks_per_level=blocks_per_level,
                           attention_levels=sorted(attention_levels), padding=list(pad),
                           emb_dim=emb_dim, fourier_scale=fourier_scale, num_heads=num_heads,
                           groups=groups, dropout=dropout)
        if fit_grid != "error":  # keep specs of nets built without it unchanged
            self.config["fit_grid"] = fit_grid
        self.fit_grid = fit_grid
        self.pad_modes = pad
        self.factor = 2 ** (levels - 1)

        def res(ci, co):
            return ResBlock2d(ci, co, emb_dim, pad, groups, dropout)

        self.embed = NoiseEmbedding(channels[0], emb_dim, fourier_scale)
        self.conv_in = PadConv2d(in_channels + cond_channels, channels[0], 3, padding=pad)
        self.down = nn.ModuleList()
        cur = channels[0]
        for i, ch in enumerate(channels):
            level = nn.ModuleDict()
            level["blocks"] = nn.ModuleList(res(cur if b == 0 else ch, ch)
                                            for b in range(blocks_per_level))
            cur = ch
            level["attn"] = SelfAttention2d(ch, num_heads, groups) if i in attn else nn.Identity()
            level["down"] = PadConv2d(ch, ch, 3, 2, pad) if i < levels - 1 else nn.Identity()
            self.down.append(level)
        self.mid1 = res(cur, cur)
        self.mid_attn = SelfAttention2d(cur, num_heads, groups) if attn else nn.Identity()
        self.mid2 = res(cur, cur)
        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            ch = channels[i]
            level = nn.ModuleDict()
            level["upsample"] = PadConv2d(cur, cur, 3, padding=pad) if i < levels - 1 else nn.Identity()
            level["blocks"] = nn.ModuleList(res(cur + ch if b == 0 else ch, ch)
                                            for b in range(blocks_per_level))
            cur = ch
            level["attn"] = SelfAttention2d(ch, num_heads, groups) if i in attn else nn.Identity()
            self.up.append(level)
        self.norm_out = _norm(cur, groups)
        self.conv_out = PadConv2d(cur, out_channels, 3, padding=pad)
        nn.init.zeros_(self.conv_out.conv.weight)
        nn.init.zeros_(self.conv_out.conv.bias)

    def check_grid(self, height: int, width: int) -> None:
        """Raise ValueError unless H and W are divisible by ``2**(levels - 1)``."""
        for name, size in (("H (height, axis -2)", height), ("W (width, axis -1)", width)):
            if size % self.factor:
                raise ValueError(
                    f"UNet2d: grid size {name} = {size} is not divisible by the down-sampling "
                    f"factor {self.factor} (= 2**(levels-1), levels = {len(self.config['channels'])}); "
                    f"pad or crop the grid, or use fewer levels")

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), c_noise: (B,), cond: (B, Cc, H, W) or None -> (B, C_out, H, W)."""
        if x.ndim != 4:
            raise ValueError(f"UNet2d expects x of shape (B, C, H, W); got {tuple(x.shape)}")
        x = _concat_cond(x, cond, self.config["cond_channels"], "UNet2d")
        height, width = x.shape[-2:]
        if self.fit_grid == "pad":
            x = self._pad_to_fit(x)
        self.check_grid(x.shape[-2], x.shape[-1])
        emb = self.embed(broadcast_noise(c_noise, x.shape[0], x))
        h = self.conv_in(x)
        skips = []
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, emb)
            h = level["attn"](h)
            skips.append(h)
            h = level["down"](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            if not isinstance(level["upsample"], nn.Identity):
                h = level["upsample"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips.pop()], dim=1)
            for block in level["blocks"]:
                h = block(h, emb)
            h = level["attn"](h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if out.shape[-2:] != (height, width):
            top, left = self._pads(height)[0], self._pads(width)[0]
            out = out[..., top : top + height, left : left + width]
        return out

    def _pads(self, size: int) -> tuple[int, int]:
        extra = -size % self.factor
        return extra // 2, extra - extra // 2

    def _pad_to_fit(self, x: Tensor) -> Tensor:
        """Pad H and W up to multiples of the factor: circular along periodic axes, reflect
        (replicate where the axis is too short to reflect) otherwise."""
        for axis, mode in ((-2, self.pad_modes[0]), (-1, self.pad_modes[1])):
            lo, hi = self._pads(x.shape[axis])
            if lo == hi == 0:
                continue
            pad = [0, 0, lo, hi] if axis == -2 else [lo, hi, 0, 0]
            short = max(lo, hi) >= x.shape[axis]
            x = F.pad(x, pad, mode="circular" if mode == "circular" else "replicate" if short else "reflect")
        return x


def _concat_cond(x: Tensor, cond: Tensor | None, cond_channels: int, who: str, what: str = "cond_channels") -> Tensor:
    """Concatenate cond (B, Cc, *spatial) to x (B, C, *spatial) along channels, with checks naming the
    constructor argument ``what`` that set Cc."""
    if cond_channels == 0:
        if cond is not None:
            raise ValueError(f"{who} was built with {what}=0 but received cond of "
                             f"shape {tuple(cond.shape)}")
        return x
    if cond is None:
        raise ValueError(f"{who} was built with {what}={cond_channels} but cond is None")
    if cond.shape[0] != x.shape[0] or cond.shape[1] != cond_channels or cond.shape[2:] != x.shape[2:]:
        raise ValueError(f"{who}: cond has shape {tuple(cond.shape)}; expected "
                         f"{(x.shape[0], cond_channels, *x.shape[2:])}")
    return torch.cat([x, cond.to(x.dtype)], dim=1)
