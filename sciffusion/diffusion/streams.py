"""Per-member random streams: member ``k`` of condition ``i`` draws from a stream that is a function of
``(seed, i, k)`` alone, so it is the same whatever the batch or the ensemble size.

``member_generators`` / ``stream_generators`` seed them from numpy's ``SeedSequence(seed, spawn_key)``
(computed for a whole batch of keys at once by :func:`spawn_states`, bit for bit numpy's), either as one
``torch.Generator`` per member (``rng="torch"``, the default) or as counter-based Philox streams drawn for a
whole batch in one pass (``rng="philox"``, :class:`~sciffusion.diffusion.philox.PhiloxStreams`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sciffusion._deprecate import renamed_keywords
from sciffusion.diffusion.philox import PhiloxStreams

@renamed_keywords(members="n_members")
def member_generators(
    seed: int, n_members: Sequence[int] | int, device: str | torch.device = "cpu", *, key: Sequence[int] = (),
    rng: str = "torch",
) -> list[torch.Generator] | PhiloxStreams:
    """One RNG per ensemble member, derived from ``(seed, *key, member)`` like JAX's ``fold_in``.

    Member ``k`` gets the same random stream whatever the batch it is drawn in or the size of the
    ensemble, so member ``k`` of a 10-member run equals member ``k`` of a 1000-member run.
    ``key`` folds in more indices (e.g. the initial condition) so that streams never repeat.
    ``n_members`` is the ensemble size or the member ids (``members=``: deprecated spelling).
    ``rng``: ``"torch"`` generators or ``"philox"`` counter-based streams (:func:`stream_generators`).
    """
    spawn = [(*map(int, key), int(m)) for m in (range(n_members) if isinstance(n_members, int) else n_members)]
    return stream_generators(seed, spawn, device, rng=rng)


RNGS = ("torch", "philox")


def check_rng(rng: str) -> None:
    """Refuse a stream kind that is not one of :data:`RNGS` (callers check before allocating output)."""
    if rng not in RNGS:
        raise ValueError(f"rng must be one of {RNGS}, got {rng!r}")


def stream_generators(seed: int, keys: Sequence[Sequence[int]], device: str | torch.device = "cpu", *,
                      rng: str = "torch") -> list[torch.Generator] | PhiloxStreams:
    """One noise stream per key ``(..., member)``, all seeded at once from ``SeedSequence(seed, spawn_key=k)``.

    ``rng="torch"`` (default): ``[member_generators(seed, [k[-1]], device, key=k[:-1])[0] for k in keys]``,
    each ``torch.Generator`` seeded from ``SeedSequence(seed, spawn_key=k).generate_state(1, uint64)``,
    computed for all keys in one vectorised pass (:func:`spawn_states`). ``rng="philox"``: the same states
    key counter-based streams (:class:`~sciffusion.diffusion.philox.PhiloxStreams`) whose noise for a whole
    batch is one vectorised computation instead of one ``randn`` per row - other numbers than ``"torch"``'s,
    but again a function of ``(seed, key)`` alone, and (unlike ``torch.Generator``) the same on CPU and CUDA.
    """
    check_rng(rng)
    states = spawn_states(seed, keys)
    if rng == "philox":
        return PhiloxStreams(states, device)
    return [torch.Generator(device=device).manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF) for s in states]


# numpy's SeedSequence constants (numpy/random/bit_generator.pyx; stream-stable since numpy 1.19)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4


def _uint32_words(value: int) -> list[int]:
    """A non-negative int as little-endian 32-bit words, as SeedSequence coerces it (0 -> [0])."""
    words = [value & 0xFFFF_FFFF]
    value >>= 32
    while value:
        words.append(value & 0xFFFF_FFFF)
        value >>= 32
    return words


def spawn_states(seed: int, keys: Sequence[Sequence[int]]) -> np.ndarray:
    """``SeedSequence(seed, spawn_key=k).generate_state(1, np.uint64)[0]`` for every ``k`` in ``keys``.

    The same numbers as numpy's, bit for bit, computed for all keys at once: SeedSequence's hash
    is the same sequence of uint32 operations for every key of one length, so it runs on columns.
    Keys of unequal lengths, or with a component outside ``[0, 2**32)``, take numpy's own loop.
    """
    rows = [tuple(int(v) for v in k) for k in keys]
    if not rows:
        return np.zeros(0, dtype=np.uint64)
    if int(seed) < 0 or len({len(r) for r in rows}) != 1 or len(rows[0]) == 0 or \
            min(min(r) for r in rows) < 0 or max(max(r) for r in rows) >= 2**32:
        return np.array([np.random.SeedSequence(entropy=int(seed), spawn_key=r).generate_state(1, dtype=np.uint64)[0]
                         for r in rows], dtype=np.uint64)
    run = _uint32_words(int(seed))
    run += [0] * max(0, _POOL - len(run))  # SeedSequence pads the run entropy when there is a spawn key
    n = len(rows)
    entropy = [np.full(n, w, dtype=np.uint32) for w in run] + list(np.array(rows, dtype=np.uint32).T)
    hash_const = [_INIT_A]
    shift = np.uint32(16)

    def hashmix(value: np.ndarray) -> np.ndarray:
        value = value ^ np.uint32(hash_const[0])
        hash_const[0] = (hash_const[0] * _MULT_A) & 0xFFFF_FFFF
        value = value * np.uint32(hash_const[0])
        return value ^ (value >> shift)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return result ^ (result >> shift)

    zeros = np.zeros(n, dtype=np.uint32)
    pool = [hashmix(entropy[i] if i < len(entropy) else zeros) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    words, const = [], _INIT_B
    for i in range(2):  # generate_state(1, uint64): two uint32 words, low first
        value = pool[i % _POOL] ^ np.uint32(const)
        const = (const * _MULT_B) & 0xFFFF_FFFF
        value = value * np.uint32(const)
        words.append(value ^ (value >> shift))
    return words[0].astype(np.uint64) | (words[1].astype(np.uint64) << np.uint64(32))
