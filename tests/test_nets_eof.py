"""EOFMLP: its EOFs are the principal components numpy finds, whitened; they survive a checkpoint."""

import numpy as np
import pytest
import torch

from sciffusion.nets import EOFMLP, build_net, net_spec


def anisotropic(n=400, c=1, grid=(6, 6), seed=0):
    """Fields with a decaying variance spectrum (std 1/(1+k/3) along random orthogonal directions) and a mean."""
    rng = np.random.default_rng(seed)
    d = c * grid[0] * grid[1]
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = 3.0 + (rng.normal(size=(n, d)) / (1 + np.arange(d) / 3)) @ q.T
    return torch.tensor(x.reshape(n, c, *grid), dtype=torch.float32)


@pytest.mark.parametrize("rank", [5, 20])  # 5: the seeded randomised SVD; 20: the full SVD
def test_eofs_span_numpys_leading_principal_components_and_whiten_the_coefficients(rank):
    x = anisotropic()
    net = EOFMLP(1, (6, 6), rank=rank, width=16, depth=1)
    fracs = net.fit_eofs(x)
    flat = x.double().flatten(1).numpy()
    centred = flat - flat.mean(0)
    _, s, vh = np.linalg.svd(centred, full_matrices=False)
    v = vh[:rank].T
    basis = net.basis.double().numpy()
    np.testing.assert_allclose(basis @ basis.T, v @ v.T, atol=2e-3)  # same subspace (signs may differ)
    np.testing.assert_allclose(fracs["state"], (s[:rank] ** 2).sum() / (s**2).sum(), rtol=1e-4)
    np.testing.assert_allclose(net.scale.numpy(), s[:rank] / np.sqrt(len(flat) - 1), rtol=1e-3)
    c = net.encode(x).double().numpy()
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(c.T), np.eye(rank), atol=2e-3)  # whitened: unit variance, uncorrelated
    recon = net.decode(net.encode(x)).double().flatten(1).numpy()
    np.testing.assert_allclose(recon, flat.mean(0) + centred @ v @ v.T, atol=2e-4)  # the projection on the span


def test_fields_of_exactly_the_fitted_rank_round_trip_and_every_variance_is_explained():
    rng = np.random.default_rng(1)
    modes = rng.normal(size=(4, 2 * 5 * 3))
    x = torch.tensor((rng.normal(size=(200, 4)) * [5.0, 2.0, 1.0, 0.5]) @ modes - 7.0, dtype=torch.float32)
    x = x.reshape(200, 2, 5, 3)
    net = EOFMLP(2, (5, 3), rank=4, width=16, depth=1)
    assert net.fit_eofs(x)["state"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(net.decode(net.encode(x)).numpy(), x.numpy(), atol=2e-4)


def test_condition_eofs_the_mlp_shapes_and_the_checkpoint_round_trip():
    x, cond = anisotropic(seed=2), anisotropic(c=3, seed=3)
    net = EOFMLP(1, (6, 6), rank=6, cond_channels=3, cond_rank=8, width=16, depth=2)
    fracs = net.fit_eofs(x, cond)
    assert 0 < fracs["state"] < 1 and 0 < fracs["cond"] < 1
    z, zc = net.encode(x[:7]), net.encode_cond(cond[:7])
    assert z.shape == (7, 6) and zc.shape == (7, 8)
    assert net(z, torch.zeros(7), zc).shape == (7, 6)
    again = build_net(net_spec(net))
    again.load_state_dict(net.state_dict())
    torch.testing.assert_close(again.encode_cond(cond[:7]), zc)
    torch.testing.assert_close(again.decode(z), net.decode(z))


def test_unfitted_eofs_wrong_shapes_and_too_high_a_rank_are_refused():
    net = EOFMLP(1, (6, 6), rank=5, cond_channels=2, cond_rank=3, width=16, depth=1)
    with pytest.raises(RuntimeError, match="never fitted"):
        net.encode(anisotropic(n=4))
    with pytest.raises(ValueError, match=r"x has shape \(10, 1, 5, 6\), expected \(N, 1, 6, 6\)"):
        net.fit_eofs(torch.zeros(10, 1, 5, 6))
    with pytest.raises(ValueError, match="cannot fit 5 EOFs from 4 samples"):
        net.fit_eofs(anisotropic(n=4), anisotropic(n=4, c=2))
    with pytest.raises(ValueError, match="cond is required"):
        net.fit_eofs(anisotropic(n=50))
    with pytest.raises(ValueError, match="constant"):
        EOFMLP(1, (6, 6), rank=2, width=8, depth=1).fit_eofs(torch.ones(10, 1, 6, 6))


def test_a_condition_of_lower_rank_than_cond_rank_gets_zero_coefficients_not_blown_up_ones():
    """3 distinct conditions (rank 2 after centring) fitted with cond_rank 5: the 3 EOFs without variance
    are zeroed, so a new condition's whitened coefficients stay O(1) there (exactly 0) instead of being
    divided by round-off; the condition's variance is still fully explained. A state of too low a rank
    is refused by name."""
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(3, 2, 6, 6, generator=g)
    cond = distinct[torch.arange(60) % 3]
    net = EOFMLP(1, (6, 6), rank=4, cond_channels=2, cond_rank=5, width=16, depth=1)
    fracs = net.fit_eofs(anisotropic(n=60), cond)
    assert fracs["cond"] == pytest.approx(1.0, abs=1e-6)
    assert (net.cond_basis[:, 2:] == 0).all() and (net.cond_scale[2:] == 1).all()
    z = net.encode_cond(torch.randn(7, 2, 6, 6, generator=g))
    assert (z[:, 2:] == 0).all() and z.abs().max() < 50
    with pytest.raises(ValueError, match=r"the state's EOFs: only 2 of the 4 EOFs carry variance"):
        EOFMLP(1, (6, 6), rank=4, width=8, depth=1).fit_eofs(distinct[torch.arange(60) % 3, :1])
