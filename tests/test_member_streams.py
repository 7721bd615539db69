"""Per-member random streams: the vectorised SeedSequence hash is numpy's, bit for bit."""

import numpy as np
import pytest
import torch

from sciffusion.diffusion.streams import member_generators, spawn_states, stream_generators


def numpy_states(seed, keys):
    return np.array([np.random.SeedSequence(entropy=seed, spawn_key=tuple(k)).generate_state(1, dtype=np.uint64)[0]
                     for k in keys], dtype=np.uint64)


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31, 2**32 - 1, 2**32, 2**40 + 3, 2**70 + 11])
@pytest.mark.parametrize("length", [1, 2, 3, 6])
def test_spawn_states_equal_numpys_seed_sequence(seed, length):
    rng = np.random.default_rng(seed % 1000 + length)
    keys = rng.integers(0, 2**32, size=(40, length)).tolist() + [[0] * length, [2**32 - 1] * length]
    np.testing.assert_array_equal(spawn_states(seed, keys), numpy_states(seed, keys))


def test_spawn_states_falls_back_to_numpy_where_the_hash_differs():
    # a component of 2**32 or more is two words, and keys of unequal lengths hash differently
    keys = [(1, 2**32 + 5), (3,), (0, 1, 2)]
    np.testing.assert_array_equal(spawn_states(5, keys), numpy_states(5, keys))
    assert spawn_states(5, []).shape == (0,)
    with pytest.raises(ValueError):  # numpy refuses negative entropy; so does the fallback
        spawn_states(-1, [(0, 1)])


def test_stream_generators_are_member_generators():
    keys = [(c, m) for c in (0, 3, 11) for m in (0, 1, 30)]
    fast = [torch.randn(5, generator=g) for g in stream_generators(2, keys)]
    slow = [torch.randn(5, generator=member_generators(2, [m], key=(c,))[0]) for c, m in keys]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the state a member is seeded with: numpy's SeedSequence of (seed, key, member), top bit cleared
    state = int(numpy_states(2, [(3, 1)])[0]) & 0x7FFF_FFFF_FFFF_FFFF
    assert member_generators(2, [1], key=(3,))[0].initial_seed() == state
