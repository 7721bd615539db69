"""A spherical Fourier neural operator backbone for lat-lon fields on the sphere (Bonev et al. 2023).

The net follows the backbone protocol of :class:`sciffusion.diffusion.Denoiser`::

    net(x, c_noise, cond=None) -> Tensor
        x:       (B, C, nlat, nlon)   noisy field (already scaled by c_in)
        c_noise: (B,)                 noise-level code (or DYffusion's time code i / h)
        cond:    (B, Cc, nlat, nlon)  conditioning fields concatenated to x, or None
        returns  (B, C_out, nlat, nlon)

Each block is ``h + MLP(act(SHT^-1(W_l SHT(FiLM(norm(h)))) + P FiLM(norm(h))))``: a spectral
convolution whose complex channel-mixing weights ``W_l`` depend on the degree ``l`` only (the
Driscoll-Healy convolution theorem: a convolution on the sphere with a zonal kernel), a pointwise
``1 x 1`` path ``P``, and a FiLM scale/shift from the noise embedding. Every operation is either
pointwise, a global normalisation or diagonal in the zonal wavenumber ``m``, so the net is
equivariant to rotations about the polar axis: rolling the input along longitude rolls the output
(exactly for shifts by whole grid cells, up to float round-off). The output layer is zero-initialised
(EDM convention).

Needs torch-harmonics, imported lazily: ``pip install --no-deps torch-harmonics==0.9.3``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciffusion.nets.unet import NoiseEmbedding, _concat_cond, _norm, broadcast_noise

INSTALL_HINT = "pip install --no-deps torch-harmonics==0.9.3"


def _harmonics():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import torch_harmonics
    except Exception as exc:  # ImportError, or an ABI error from its compiled kernels
        raise ImportError(f"the SFNO backbone needs torch-harmonics ({exc}); install it with `{INSTALL_HINT}`") from exc
    return torch_harmonics


class SpectralConvS2(nn.Module):
    """``x (B, C, nlat, nlon) -> SHT^-1(W_l SHT(x)) (B, C_out, nlat, nlon)`` with ``W_l`` complex ``(C, C_out, lmax)``."""

    def __init__(self, sht, isht, cin: int, cout: int):
        super().__init__()
        self.sht, self.isht = sht, isht
        scale = (2.0 / cin) ** 0.5
        self.weight = nn.Parameter(scale * torch.randn(cin, cout, sht.lmax, 2))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        coeffs = self.sht(x.float())  # (B, C, lmax, mmax) complex
        w = torch.view_as_complex(self.weight.float().contiguous())
        out = torch.einsum("bilm,iol->bolm", coeffs, w)
        return self.isht(out).to(dtype)


class SFNO(nn.Module):
    """Spherical Fourier neural operator denoiser backbone (see the module docstring).

    Args:
        in_channels, out_channels, cond_channels: channels of x, of the output (default
            ``in_channels``) and of the conditioning fields.
        nlat, nlon: the grid (``grid="equiangular"`` includes both poles, as the shallow-water
            system of :mod:`sciffusion.systems` writes it; ``"legendre-gauss"`` for Gaussian grids).
        width: channels of the hidden state; n_layers: number of spectral blocks.
        lmax, mmax: spectral truncation (default ``(nlat + 1) // 2`` and ``min(lmax, nlon // 2 + 1)``).
        fourier_scale: std of the random Fourier frequencies of the noise embedding.
        dropout: dropout in the blocks' MLPs (DYffusion's stochastic interpolator uses it at inference).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, cond_channels: int = 0, *, nlat: int,
                 nlon: int, width: int = 32, n_layers: int = 4, lmax: int | None = None, mmax: int | None = None,
                 grid: str = "equiangular", fourier_scale: float = 16.0, dropout: float = 0.0, groups: int = 8):
        super().__init__()
        th = _harmonics()
        out_channels = in_channels if out_channels is None else out_channels
        self.config = dict(in_channels=in_channels, out_channels=out_channels, cond_channels=cond_channels, nlat=nlat,
                           nlon=nlon, width=width, n_layers=n_layers, lmax=lmax, mmax=mmax, grid=grid,
                           fourier_scale=fourier_scale, dropout=dropout, groups=groups)
        lmax = (nlat + 1) // 2 if lmax is None else int(lmax)
        mmax = min(lmax, nlon // 2 + 1) if mmax is None else int(mmax)
        self.sht = th.RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).float()
        self.isht = th.InverseRealSHT(nlat, nlon, lmax=self.sht.lmax, mmax=self.sht.mmax, grid=grid).float()
        self.embed = NoiseEmbedding(width, 4 * width, fourier_scale)
        self.lift = nn.Conv2d(in_channels + cond_channels, width, 1)
        self.norms = nn.ModuleList(_norm(width, groups) for _ in range(n_layers))
        self.films = nn.ModuleList(nn.Linear(4 * width, 2 * width) for _ in range(n_layers))
        self.spectral = nn.ModuleList(SpectralConvS2(self.sht, self.isht, width, width) for _ in range(n_layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(n_layers))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Dropout(dropout),
                                                nn.Conv2d(2 * width, width, 1)) for _ in range(n_layers))
        self.norm_out = _norm(width, groups)
        self.proj = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        """x: (B, C, nlat, nlon), c_noise: (B,), cond: (B, Cc, nlat, nlon) or None -> (B, C_out, nlat, nlon)."""
        c = self.config
        if x.ndim != 4 or tuple(x.shape[-2:]) != (c["nlat"], c["nlon"]):
            raise ValueError(f"SFNO expects x of shape (B, C, {c['nlat']}, {c['nlon']}); got {tuple(x.shape)}")
        x = _concat_cond(x, cond, c["cond_channels"], "SFNO")
        emb = F.silu(self.embed(broadcast_noise(c_noise, x.shape[0], x)).to(x.dtype))
        h = self.lift(x)
        for norm, film, spec, point, mlp in zip(self.norms, self.films, self.spectral, self.pointwise, self.mlps):
            scale, shift = film(emb)[:, :, None, None].chunk(2, dim=1)
            y = norm(h) * (1 + scale) + shift
            h = h + mlp(F.gelu(spec(y) + point(y)))
        return self.proj(F.silu(self.norm_out(h)))
