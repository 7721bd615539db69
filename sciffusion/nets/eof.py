"""Latent diffusion in an EOF basis: an MLP on the leading EOF (principal-component) coefficients.

A gridded state ``x (B, C, *grid)`` is written as ``mean + basis @ (scale * c)`` with ``c`` the
whitened coefficients of its ``rank`` leading empirical orthogonal functions (EOFs) — the
climate-science name for the principal components of the training fields. The diffusion model
then runs on ``c (B, rank)``: one network call costs a few matrix-vector products instead of a
convolutional U-Net pass, which is what makes a generated member cheaper than a simulated one on
small grids. The condition (seeds, seed mean, lead time, ...) is compressed by its own EOFs.

The bases are buffers: they are fitted once from training data (:meth:`EOFMLP.fit_eofs`) and then
travel with the weights in every checkpoint. What the ``rank`` leading EOFs do not span is lost:
``explained`` holds the fraction of the training variance they keep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sciffusion.nets.mlp import MLP


RELATIVE_FLOOR = 1e-6  # an EOF whose std is below this fraction of the leading one's carries no variance (round-off)


def _eofs(data: Tensor, rank: int, name: str, seed: int = 0, *, degenerate: str = "raise"
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean ``(D,)``, leading EOFs ``(D, rank)``, their std ``(rank,)`` and the explained variance fraction.

    Data of lower rank than ``rank`` leave EOFs with round-off variance; whitening by that std would
    blow any new sample's projection up. ``degenerate="raise"``: refuse them (lower the rank);
    ``"zero"``: zero those basis vectors (std 1), so their coefficient is 0 for every input."""
    n, d = data.shape
    if rank > min(n - 1, d):
        raise ValueError(f"{name}: cannot fit {rank} EOFs from {n} samples of {d} values; "
                         f"rank must be at most {min(n - 1, d)}")
    x = data.double()
    mean = x.mean(0)
    x = x - mean
    total = float((x**2).sum())
    if not total > 0:
        raise ValueError(f"{name}: the training data are constant; there are no EOFs to fit")
    if rank <= min(n, d) // 4:  # randomised SVD, seeded: reproducible and much cheaper than a full SVD
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the caller's RNG state (CPU and GPUs) comes back after
            torch.manual_seed(seed)
            _, s, v = torch.svd_lowrank(x, q=min(rank + 32, min(n, d)), niter=6)
        s, v = s[:rank], v[:, :rank]
    else:
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        s, v = s[:rank], vh[:rank].T
    std = s / math.sqrt(n - 1)
    explained = float((s**2).sum()) / total
    live = std > RELATIVE_FLOOR * std[0]
    if not live.all():
        if degenerate == "raise":
            raise ValueError(f"{name}: only {int(live.sum())} of the {rank} EOFs carry variance (the others are below "
                             f"{RELATIVE_FLOOR:g} of the leading EOF's std); lower the rank")
        v, std = v.clone(), std.clone()
        v[:, ~live], std[~live] = 0.0, 1.0
    return mean.float(), v.float().contiguous(), std.float(), torch.tensor(explained)


class EOFMLP(nn.Module):
    """MLP backbone on the whitened EOF coefficients of a gridded state, conditioned on EOF
    coefficients of a gridded condition.

    ``forward(x, c_noise, cond)`` works in latent space: ``x (B, rank)``, ``cond (B, cond_rank)``
    (use :meth:`encode`, :meth:`encode_cond` and :meth:`decode` at the edges). The EOFs are
    buffers set by :meth:`fit_eofs`; a model whose EOFs were never fitted refuses to run. Conditions
    of lower rank than ``cond_rank`` (e.g. one control run conditioning several targets) are fine: the
    EOFs beyond their rank are zeroed and their coefficients are 0; a state of too low a rank is refused.

    Args:
        in_channels, grid_shape: the gridded state ``(C, *grid)``.
        rank: number of EOFs of the state (the latent size).
        cond_channels, cond_rank: the gridded condition ``(Cc, *grid)`` and its number of EOFs
            (0: unconditional).
        width, depth, fourier_scale: the :class:`~sciffusion.nets.MLP`.
    """

    def __init__(self, in_channels: int, grid_shape: Sequence[int], rank: int = 128, cond_channels: int = 0,
                 cond_rank: int = 128, width: int = 512, depth: int = 4, fourier_scale: float = 16.0):
        super().__init__()
        grid_shape = [int(s) for s in grid_shape]
        cond_rank = int(cond_rank) if cond_channels else 0
        self.config = dict(in_channels=int(in_channels), grid_shape=grid_shape, rank=int(rank),
                           cond_channels=int(cond_channels), cond_rank=cond_rank, width=width, depth=depth,
                           fourier_scale=fourier_scale)
        self.event_shape = (int(in_channels), *grid_shape)
        self.cond_shape = (int(cond_channels), *grid_shape)
        d, dc = int(in_channels) * math.prod(grid_shape), int(cond_channels) * math.prod(grid_shape)
        self.rank, self.cond_rank = int(rank), cond_rank
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("basis", torch.zeros(d, self.rank))
        self.register_buffer("scale", torch.ones(self.rank))
        self.register_buffer("explained", torch.tensor(0.0))
        self.register_buffer("cond_mean", torch.zeros(dc))
        self.register_buffer("cond_basis", torch.zeros(dc, cond_rank))
        self.register_buffer("cond_scale", torch.ones(cond_rank))
        self.register_buffer("cond_explained", torch.tensor(0.0))
        self.mlp = MLP(self.rank, cond_features=cond_rank, width=width, depth=depth, fourier_scale=fourier_scale)

    # ------------------------------------------------------------------ EOFs
    @torch.no_grad()
    def fit_eofs(self, x: Tensor, cond: Tensor | None = None, seed: int = 0) -> dict[str, float]:
        """Fit the EOFs on training states ``x (N, C, *grid)`` (and conditions ``(N, Cc, *grid)``).

        Returns the explained variance fractions ``{"state": ..., "cond": ...}``."""
        self._check(x, self.event_shape, "x")
        out = {"state": self._store("", _eofs(x.flatten(1), self.rank, "the state's EOFs", seed))}
        if self.cond_rank:
            if cond is None:
                raise ValueError("cond is required: the model was built with cond_channels > 0")
            self._check(cond, self.cond_shape, "cond")
            out["cond"] = self._store("cond_", _eofs(cond.flatten(1), self.cond_rank, "the condition's EOFs", seed + 1,
                                                     degenerate="zero"))
        return out

    def _store(self, prefix: str, fitted) -> float:
        for name, val in zip(("mean", "basis", "scale", "explained"), fitted):
            getattr(self, prefix + name).copy_(val)
        return float(fitted[-1])

    def _check(self, x: Tensor, shape: Sequence[int], name: str) -> None:
        if tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"EOFMLP: {name} has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, shape))})")

    def _fitted(self) -> None:
        if not float(self.explained) > 0:
            raise RuntimeError("EOFMLP: the EOFs were never fitted; call fit_eofs(x, cond) on training data first")

    def _project(self, x: Tensor, mean: Tensor, basis: Tensor, scale: Tensor) -> Tensor:
        self._fitted()
        return ((x.to(basis).flatten(1) - mean) @ basis) / scale

    def encode(self, x: Tensor) -> Tensor:
        """Gridded ``(B, C, *grid)`` -> whitened EOF coefficients ``(B, rank)``."""
        self._check(x, self.event_shape, "x")
        return self._project(x, self.mean, self.basis, self.scale)

    def decode(self, c: Tensor) -> Tensor:
        """Whitened coefficients ``(B, rank)`` -> gridded ``(B, C, *grid)`` (in the span of the EOFs)."""
        self._fitted()
        c = c.to(self.basis)
        return ((c * self.scale) @ self.basis.T + self.mean).reshape(c.shape[0], *self.event_shape)

    def encode_cond(self, cond: Tensor) -> Tensor:
        """Gridded condition ``(B, Cc, *grid)`` -> whitened EOF coefficients ``(B, cond_rank)``."""
        self._check(cond, self.cond_shape, "cond")
        return self._project(cond, self.cond_mean, self.cond_basis, self.cond_scale)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.mlp(x, c_noise, cond if self.cond_rank else None)
