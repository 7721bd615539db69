"""Bars for the public defaults of ``inverse.sample`` on fresh MCGdiff Gaussian-mixture problems.

Seeds 40000 + 10 d + d_y, used nowhere else (the defaults were chosen on seeds 20000+, the
benchmark table scores seeds 10000+; a first version of this test, on seeds 30000+, compared 16
with 1000 particles: 63 pooled 16-particle runs were already at the floor, so the particle check
now starts from one particle, which the validation seeds showed is not). Score: sliced W1 to an
exact-posterior set divided by the two-sample floor SW(E1, E2) of two independent exact sets; an
exact sampler scores 0.3-1.5. About 10 s on one idle CPU thread (90 s on a loaded shared one).
"""

import statistics

import pytest
import torch

from sciffusion.inverse import Linear, sample
from sciffusion.testing import SlicedWasserstein, mcg_problem

N = 1000


def _ratios(d: int, guidance: str, **options) -> list[float]:
    """SW / floor of ``guidance`` with the public defaults at 100 steps, one problem per d_y in 1, 2, 4."""
    out = []
    for d_y in (1, 2, 4):
        prior, a, y, s, _ = mcg_problem(d, d_y, seed=40000 + 10 * d + d_y)
        post = prior.posterior(a, y, s)
        sw = SlicedWasserstein(post.sample(N, torch.Generator().manual_seed(1)), 500)
        floor = sw(post.sample(N, torch.Generator().manual_seed(2)))
        x = sample(prior, Linear(a), y, noise_std=s, guidance=guidance, n_members=N, steps=100,
                   generator=torch.Generator().manual_seed(3), **options)
        out.append(sw(x) / floor)
    return out


@pytest.mark.parametrize("d", [8, 80])
def test_smc_with_the_defaults_is_within_2x_of_the_floor_and_improves_with_particles(d):
    """Mean over d_y = 1, 2, 4 within 2x of the floor (each problem within 3x) with 1000
    particles; one particle (1000 twisted-guided draws, no reweighting) is more than twice as far:
    the error falls as the particles grow (it is at the floor from about 4 particles on)."""
    many, one = _ratios(d, "smc", particles=N), _ratios(d, "smc", particles=1)
    assert statistics.mean(many) < 2 and max(many) < 3, many
    assert statistics.mean(one) > 2 * statistics.mean(many), (one, many)


@pytest.mark.xfail(strict=True, reason="MMPS's Gaussian approximation of x0 | x is 3-25x the floor on these "
                   "mixtures at any step count (results/posterior_gmm_validation.json); issue 23 asks for 5x")
def test_mmps_with_the_defaults_is_within_5x_of_the_floor():
    assert statistics.mean(_ratios(8, "mmps")) < 5
