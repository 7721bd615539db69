"""Counter-based noise streams: Philox4x32-10 in torch integer arithmetic, one stream per row.

``torch.Generator`` streams cost one generator and one ``randn`` launch per member per draw; a batch of
thousands of members on a GPU then spends its time launching tiny kernels. A counter-based generator
(Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"; the generator of
cuRAND's and JAX's default streams) computes the noise of every member of a batch in one vectorised
pass: the ``j``-th draw of row ``k`` is a pure function of the row's 64-bit key and the counter
``(block, j)``, so a member's noise does not depend on the batch it is drawn in, nor on the device.

    streams = PhiloxStreams(spawn_states(seed, keys))
    z = streams.randn((len(keys), 64))      # draw 0 of every row; the next call is draw 1

The words are Random123's Philox4x32-10 (tested against its known-answer vectors); normals are
Box-Muller pairs of 24-bit uniforms. Everything is integer or float32 arithmetic on int64 tensors
(the 32 x 32-bit products are split into 16-bit halves, so nothing overflows), so the numbers are
the same on CPU and CUDA up to the last bit of ``log``/``cos`` (a few float32 ulps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key schedule increments (golden ratio, sqrt(3) - 1)
_MASK = 0xFFFF_FFFF
ROUNDS = 10


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * m`` for int64 ``a`` in ``[0, 2**32)`` and a 32-bit constant ``m``."""
    lo_part = a * (m & 0xFFFF)  # < 2**48
    hi_part = a * (m >> 16)  # < 2**48; a * m = hi_part * 2**16 + lo_part
    lo = (lo_part + ((hi_part & 0xFFFF) << 16)) & _MASK
    hi = (hi_part + (lo_part >> 16)) >> 16
    return hi, lo


def philox4x32(counter: Sequence[torch.Tensor], key: Sequence[torch.Tensor], rounds: int = ROUNDS) -> list[torch.Tensor]:
    """Philox4x32-``rounds`` of broadcastable int64 words ``counter = (c0, c1, c2, c3)``, ``key = (k0, k1)``,
    each in ``[0, 2**32)``; returns the four output words (int64 in ``[0, 2**32)``)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


class PhiloxStreams:
    """One counter-based normal stream per row, keyed by 64-bit states (e.g. :func:`spawn_states`).

    Row ``k``'s ``j``-th call of :meth:`randn` is Philox4x32-10 with key ``states[k]`` (low word first) and
    counters ``(block, j, 0, 0)``, ``block = 0, 1, ...`` giving 4 uniforms each, turned into 4 normals by
    Box-Muller (element ``4 * block + i``). Pass it as ``generator=`` to :func:`sciffusion.diffusion.sample`.
    """

    kind = "philox"

    def __init__(self, states: np.ndarray | Sequence[int], device: str | torch.device = "cpu"):
        s = np.asarray(states, dtype=np.uint64).reshape(-1)
        self.device = torch.device(device)
        lo = torch.from_numpy((s & np.uint64(_MASK)).astype(np.int64))
        hi = torch.from_numpy((s >> np.uint64(32)).astype(np.int64))
        self.key = (lo.to(self.device)[:, None], hi.to(self.device)[:, None])
        self.draws = 0

    def __len__(self) -> int:
        return int(self.key[0].shape[0])

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype | None = None,
              device: str | torch.device | None = None) -> torch.Tensor:
        """Normals of ``shape = (rows, *event)``: each row from its own stream; advances every stream by one draw."""
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != len(self):
            raise ValueError(f"got {len(self)} streams for a batch of shape {shape}")
        n = math.prod(shape[1:])
        blocks = torch.arange((n + 3) // 4, dtype=torch.int64, device=self.device)[None, :]
        draw = torch.full((1, 1), self.draws & _MASK, dtype=torch.int64, device=self.device)
        zero = torch.zeros((1, 1), dtype=torch.int64, device=self.device)
        words = philox4x32((blocks, draw, zero, zero), self.key)
        self.draws += 1
        # 24-bit uniforms in (0, 1): exact in float32
        u = [((w >> 8).to(torch.float32) + 0.5) * 2.0**-24 for w in words]
        out = []
        for a, b in ((u[0], u[1]), (u[2], u[3])):
            r, t = torch.sqrt(-2.0 * torch.log(a)), (2.0 * math.pi) * b
            out += [r * torch.cos(t), r * torch.sin(t)]
        z = torch.stack(out, dim=-1).reshape(len(self), -1)[:, :n].reshape(shape)
        return z.to(device=device if device is not None else self.device, dtype=dtype or torch.float32)
