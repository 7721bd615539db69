"""Counter-based member streams (``rng="philox"``): Random123's Philox4x32-10 words, normals that are
standard normal, a member's noise independent of its batch, and the emulator's law unchanged."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sciffusion.diffusion.philox import PhiloxStreams, philox4x32
from sciffusion.diffusion.sample import randn
from sciffusion.diffusion.streams import member_generators, spawn_states, stream_generators
from sciffusion.emulators.members import generate as generate_members

# Random123's kat_vectors: counter (4 words), key (2 words) -> output (4 words)
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


def philox_reference(counter, key, rounds=10):
    """Philox4x32 on Python integers, straight from Salmon et al. (2011): an independent check of the
    16-bit-split tensor arithmetic."""
    c, (k0, k1) = list(counter), key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) % 2**32, (k1 + 0xBB67AE85) % 2**32
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 % 2**32, (p0 >> 32) ^ c[3] ^ k1, p0 % 2**32]
    return tuple(c)


@pytest.mark.parametrize("counter, key, want", KAT)
def test_philox_words_equal_random123s_known_answers(counter, key, want):
    got = philox4x32([torch.tensor([v]) for v in counter], [torch.tensor([v]) for v in key])
    assert tuple(int(w) for w in got) == want == philox_reference(counter, key)


def test_philox_equals_the_integer_reference_on_random_words():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**32, size=(6, 200), dtype=np.uint64).astype(np.int64)
    got = philox4x32([torch.from_numpy(w) for w in words[:4]], [torch.from_numpy(w) for w in words[4:]])
    for i in range(0, 200, 17):
        assert tuple(int(g[i]) for g in got) == philox_reference(tuple(int(w) for w in words[:4, i]),
                                                                 tuple(int(w) for w in words[4:, i]))


def test_normals_are_standard_normal_and_independent_across_rows_and_draws():
    streams = PhiloxStreams(spawn_states(0, [(c, m) for c in range(50) for m in range(40)]))
    a, b = streams.randn((2000, 101)), streams.randn((2000, 101))  # 101: a part block at the end of each row
    x = torch.cat([a, b]).reshape(-1).double().numpy()
    assert stats.kstest(x, "norm").pvalue > 1e-3
    assert abs(x.mean()) < 4 / math.sqrt(x.size) and abs(x.var() - 1) < 4 * math.sqrt(2 / x.size)
    # no correlation between neighbouring elements, rows (members) or draws
    for u, v in ((a[:, :-1], a[:, 1:]), (a[:-1], a[1:]), (a, b)):
        r = np.corrcoef(u.reshape(-1).numpy(), v.reshape(-1).numpy())[0, 1]
        assert abs(r) < 4 / math.sqrt(u.numel())


def test_a_members_noise_is_the_same_in_any_batch_and_differs_between_members():
    keys = [(c, m) for c in (0, 5) for m in range(6)]
    whole = stream_generators(3, keys, rng="philox")
    first, second = whole.randn((12, 3, 7)), whole.randn((12, 3, 7))
    for k, key in enumerate(keys):
        alone = member_generators(3, [key[1]], key=key[:1], rng="philox")
        torch.testing.assert_close(randn((1, 3, 7), alone)[0], first[k], rtol=0, atol=0)
        torch.testing.assert_close(randn((1, 3, 7), alone)[0], second[k], rtol=0, atol=0)
    assert not torch.allclose(first[0], first[1]) and not torch.allclose(first, second)
    with pytest.raises(ValueError, match="streams for a batch"):
        whole.randn((5, 3))
    with pytest.raises(ValueError, match="rng must be one of"):
        stream_generators(3, keys, rng="numpy")


def exact_standard_normal(x, sigma, cond=None):
    return x / (1 + sigma.reshape(-1, *(1,) * (x.ndim - 1)) ** 2)


def test_generate_with_philox_streams_transports_each_members_own_stream():
    """The exact N(0, I) denoiser makes the deterministic Heun sampler a fixed linear map x = a z of the
    starting noise z; with philox streams z is draw 0 of stream (seed, condition, member), the map is the
    same ``a`` as with torch streams, member k is the same whatever the batch size, and the numbers differ
    from the torch streams'."""
    kw = dict(event_shape=(4,), n_conditions=3, seed=1, steps=12, progress=False)
    x = generate_members(exact_standard_normal, None, 50, batch_size=70, rng="philox", **kw)
    z = stream_generators(1, [(c, m) for c in range(3) for m in range(50)], rng="philox").randn((150, 4))
    a = float(x.reshape(-1) @ z.reshape(-1) / (z.reshape(-1) @ z.reshape(-1)))
    torch.testing.assert_close(x.reshape(150, 4), a * z, rtol=1e-5, atol=1e-5)
    xt = generate_members(exact_standard_normal, None, 50, batch_size=70, **kw)
    zt = torch.stack([torch.randn(4, generator=g) for g in stream_generators(1, [(c, m) for c in range(3) for m in range(50)])])
    torch.testing.assert_close(xt.reshape(150, 4), a * zt, rtol=1e-5, atol=1e-5)
    small = generate_members(exact_standard_normal, None, 7, batch_size=3, rng="philox", **kw)
    torch.testing.assert_close(small, x[:, :7], rtol=0, atol=0)
    assert not torch.allclose(xt[:, :7], small)
    with pytest.raises(ValueError, match="rng must be one of"):
        generate_members(exact_standard_normal, None, 2, rng="Philox", **kw)
