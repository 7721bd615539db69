"""Projected sampling: feasibility to solver precision, and no distortion of a prior that already complies."""

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
    x = sample(prior, None, None, noise_std=None, method="projected", projection=projection, num_samples=500,
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
    kw = dict(num_samples=400, steps=15, sigma_max=500.0, dtype=F64, sampler="heun")
    plain = diffusion_sample(prior, (400, 3), steps=15, method="heun", sigma_max=500.0, dtype=F64,
                             generator=torch.Generator().manual_seed(2))
    proj = sample(prior, None, None, noise_std=None, method="projected", projection=FixedTotal(3.0),
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
        sample(grid_mixture(2), None, None, noise_std=None, method="projected", num_samples=2, steps=2)
    with pytest.raises(ValueError, match="rank"):
        LinearEquality(torch.ones(2, 3), torch.zeros(2))
