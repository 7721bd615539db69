"""A residual MLP backbone for vector states ``(B, D)`` (toy problems, low-dimensional systems)."""

from __future__ import annotations

from torch import Tensor, nn

from sciffusion.nets.unet import NoiseEmbedding, _concat_cond, broadcast_noise


class MLP(nn.Module):
    """Residual MLP ``net(x, c_noise, cond=None)`` with x: (B, D), cond: (B, Dc) concatenated to x.

    Each block is LayerNorm -> Linear -> SiLU -> Linear with a FiLM scale/shift from the
    Fourier noise embedding. The output layer starts at zero (EDM convention), so an untrained
    model is ``D(x) = c_skip * x``.

    Args:
        in_features: D.
        out_features: output size (default D).
        cond_features: Dc (0 = unconditional).
        width, depth: hidden size and number of residual blocks.
        fourier_scale: std of the random Fourier frequencies of the noise embedding.
    """

    def __init__(self, in_features: int, out_features: int | None = None, cond_features: int = 0,
                 width: int = 128, depth: int = 3, fourier_scale: float = 16.0):
        super().__init__()
        out_features = in_features if out_features is None else out_features
        self.config = dict(in_features=in_features, out_features=out_features, cond_features=cond_features,
                           width=width, depth=depth, fourier_scale=fourier_scale)
        self.cond_features = cond_features
        self.embed = NoiseEmbedding(64, width, fourier_scale)
        self.inp = nn.Linear(in_features + cond_features, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.fc1 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.film = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(depth))
        self.out = nn.Linear(width, out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.ndim != 2:
            raise ValueError(f"MLP expects x of shape (B, D), got {tuple(x.shape)}")
        x = _concat_cond(x, cond, self.cond_features, "MLP", "cond_features")
        c = broadcast_noise(c_noise, x.shape[0], x)
        if c.numel() > 1 and bool((c == c[0]).all()):  # one noise level for the batch (sampling): embed it once
            c = c[:1]
        emb = nn.functional.silu(self.embed(c).to(x.dtype))  # (B or 1, width): the FiLM terms broadcast
        h = self.inp(x)
        for norm, fc1, fc2, film in zip(self.norms, self.fc1, self.fc2, self.film):
            scale, shift = film(emb).chunk(2, dim=1)
            h = h + fc2(nn.functional.silu(fc1(norm(h)) * (1 + scale) + shift))
        return self.out(h)
