"""Projected sampling: feasibility to solver precision, and no distortion of a prior that already complies."""

import numpy as np
import pytest
import torch

from sciffusion.diffusion import sample as diffusion_sample
from sciffusion.inverse import Box, FixedTotal, LinearEquality, NonNegative, ProjectedDenoiser, sample
from sciffusion.testing import GaussianMixture, grid_mixture, sliced_wasserstein

F64 = torch.float64


def _plane_mixture(total=3.0):
    """A 3-component mixture in d=3 supported on the plane sum(x) = total (singular covariances)."""
    p = torch.eye(3, dtype=F64) - torch.ones(3, 3, dtype=F64) / 3
    means = torch.tensor([[1.0, 1.0, 1.0], [4.0, -2.0, 1.0], [-1.0, 0.5, 3.5]], dtype=F64)
    means = means + (total - means.sum(1, keepdim=True)) / 3
    return GaussianMixture([0.5, 0.3, 0.2], means, p.expand(3, 3, 3) * 0.5)


@pytest.mark.parametrize("projection", [
    Box(-3.0, 5.0), NonNegative(), FixedTotal(10.0),
    LinearEquality(torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0]]), torch.tensor([0.5, 1.0])),
])
def test_projected_samples_satisfy_the_constraint_to_solver_precision(projection):
    """The prior (grid mixture, d=4) violates every constraint; projected samples do not."""
    prior = grid_mixture(4, seed=0)
    raw = prior.sample(500, torch.Generator().manual_seed(0))
    assert float(projection.violation(raw).max()) > 1.0
    x = sample(prior, None, None, noise_std=None, guidance="projected", projection=projection, n_members=500,
               steps=20, sigma_max=2000.0, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert float(projection.violation(x).max()) < 1e-10


@pytest.mark.parametrize("projection", [Box(-30.0, 30.0), NonNegative(), FixedTotal(2.0)])
def test_projections_are_idempotent_and_nonexpansive(projection):
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(50, 6, generator=g, dtype=F64) * 5, torch.randn(50, 6, generator=g, dtype=F64) * 5
    px, pz = projection(x), projection(z)
    torch.testing.assert_close(projection(px), px)
    assert bool(((px - pz).norm(dim=1) <= (x - z).norm(dim=1) + 1e-12).all())


@pytest.mark.parametrize("project_iterates", [False, True])
def test_affine_constraint_the_prior_satisfies_leaves_the_samples_unchanged(project_iterates):
    """Exact mixture prior on the plane sum(x) = 3: projected sampling gives the same draws as
    unprojected sampling (pathwise, same seed), whether the clean estimate or the iterate is projected."""
    prior = _plane_mixture(3.0)
    kw = dict(n_members=400, steps=15, sigma_max=500.0, dtype=F64, sampler="heun")
    plain = diffusion_sample(prior, (400, 3), steps=15, method="heun", sigma_max=500.0, dtype=F64,
                             generator=torch.Generator().manual_seed(2))
    proj = sample(prior, None, None, noise_std=None, guidance="projected", projection=FixedTotal(3.0),
                  project_iterates=project_iterates, generator=torch.Generator().manual_seed(2), **kw)
    assert float(FixedTotal(3.0).violation(proj).max()) < 1e-10
    if not project_iterates:
        torch.testing.assert_close(proj, plain, rtol=1e-9, atol=1e-9)
    exact = prior.sample(400, torch.Generator().manual_seed(3))
    floor = sliced_wasserstein(exact, prior.sample(400, torch.Generator().manual_seed(4)), 500)
    assert sliced_wasserstein(proj, exact, 500) < 2 * floor


def test_box_the_prior_satisfies_leaves_the_distribution_unchanged():
    """For a convex set containing the prior's support, D = E[x0|x] already lies in it, so
    projecting the clean estimate changes nothing (here: a mixture on the plane, box [-50, 50])."""
    prior = _plane_mixture(3.0)
    den = ProjectedDenoiser(prior, Box(-50.0, 50.0))
    a = diffusion_sample(den, (300, 3), steps=10, sigma_max=500.0, dtype=F64, generator=torch.Generator().manual_seed(0))
    b = diffusion_sample(prior, (300, 3), steps=10, sigma_max=500.0, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_projection_needs_a_callable():
    with pytest.raises(ValueError, match="projection"):
        sample(grid_mixture(2), None, None, noise_std=None, guidance="projected", n_members=2, steps=2)
    with pytest.raises(ValueError, match="rank"):
        LinearEquality(torch.ones(2, 3), torch.zeros(2))


def _darcy_pair(n=12, count=3):
    from sciffusion.systems import DarcyFlow

    a, u = DarcyFlow(n=n).sample(count, seed=7)
    x = torch.tensor(np.stack([a, u], axis=1))
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    return (x - mean[:, None, None]) / std[:, None, None], mean.tolist(), std.tolist()


def test_darcy_projection_keeps_solver_data_and_maps_any_field_onto_the_pde():
    """Darcy data already solve the PDE: the map leaves them unchanged (to round-off); a
    perturbed pair is sent back to (clamped a, solve(a)) and the map is idempotent."""
    from sciffusion.inverse import DarcyProjection, DarcyResidual

    x, mean, std = _darcy_pair()
    proj = DarcyProjection(mean, std)
    torch.testing.assert_close(proj(x), x, rtol=0, atol=1e-9)
    assert float(proj.violation(x).max()) < 1e-12
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert float(proj.violation(noisy).min()) > 1e-4
    px = proj(noisy)
    a = px[:, 0] * std[0] + mean[0]
    assert float(a.min()) >= 3.0 and float(a.max()) <= 12.0
    assert float(DarcyResidual(mean, std)(px).abs().max()) < 1e-8
    torch.testing.assert_close(proj(px), px, rtol=0, atol=1e-12)


def test_darcy_projection_refuses_bad_normalisation_and_bounds():
    from sciffusion.inverse import DarcyProjection

    with pytest.raises(ValueError, match="std"):
        DarcyProjection([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="bounds"):
        DarcyProjection(bounds=(0.0, 12.0))


@pytest.mark.parametrize("through", [False, True])
def test_guidance_through_the_projection_reaches_the_unobserved_channel(through):
    """Prior x = (a, u) ~ N(0, I), constraint map P(a, u) = (a, 2a), and only u observed
    (y = 2 a + n, a_true = 1, noise 0.1). Guided through P, a concentrates at the exact posterior
    mean of the constrained prior (4/4.01; sd 0.05, DPS gives about 0.03); guided before P, the observation never reaches a
    and the samples keep the prior's a ~ N(0, 1) (P then overwrites the guided u)."""
    from sciffusion.inverse import Linear

    prior = GaussianMixture([1.0], torch.zeros(1, 2, dtype=F64), torch.eye(2, dtype=F64)[None])

    def tie(x):
        return torch.stack([x[:, 0], 2 * x[:, 0]], dim=1)

    x = sample(prior, Linear(torch.tensor([[0.0, 1.0]], dtype=F64)), torch.tensor([2.0], dtype=F64),
               noise_std=0.1, guidance="projected", projection=tie, inner_guidance="dps", guide_projected=through,
               n_members=400, steps=60, sigma_max=100.0, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x[:, 1], 2 * x[:, 0])
    if through:
        assert abs(float(x[:, 0].mean()) - 4 / 4.01) < 0.05 and float(x[:, 0].std()) < 0.2
    else:
        assert abs(float(x[:, 0].mean())) < 0.2 and 0.8 < float(x[:, 0].std()) < 1.2
