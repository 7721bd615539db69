"""The scoring and batching of benchmarks/pde_inverse.py, against hand-computed values and unbatched runs."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from pde_inverse import CaseSensors, interval_coverage, relative_l2, scores  # noqa: E402
from sciffusion.inverse import SparseSensors  # noqa: E402
from sciffusion.inverse.guidance import DPS, MMPS  # noqa: E402
from sciffusion.inverse.operators import Observation  # noqa: E402
from sciffusion.inverse.residual import ResidualGuidance  # noqa: E402


def test_relative_l2_is_the_ratio_of_frobenius_norms():
    truth = np.array([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    est = truth + np.array([[0.0, 1.0], [0.0, 0.0]])
    assert relative_l2(est, truth) == pytest.approx(0.2)
    both = relative_l2(np.stack([est, truth + 2.0]), truth)  # error norm 4 on the second
    np.testing.assert_allclose(both, [0.2, 0.8])


def test_interval_coverage_uses_the_student_t_prediction_interval():
    # two draws 0 and 2: mean 1, s = sqrt(2), half-width t_1(0.95) sqrt(2) sqrt(1.5) = 6.3138 * 1.7321 = 10.936
    draws = np.array([[0.0, 2.0]])[:, :, None]
    assert interval_coverage(draws, np.array([[11.9]])) == 1.0
    assert interval_coverage(draws, np.array([[12.0]])) == 0.0
    truth = np.array([[1.0, 11.9, -9.9, 12.0]])
    assert interval_coverage(np.broadcast_to(draws, (1, 2, 4)), truth) == 0.75
    with pytest.raises(ValueError, match="2 draws"):
        interval_coverage(draws[:, :1], np.array([[1.0]]))


def test_interval_coverage_is_ninety_percent_for_exchangeable_gaussian_draws():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 5, 50))  # truth = a sixth exchangeable draw
    assert interval_coverage(x, rng.standard_normal((4000, 50))) == pytest.approx(0.9, abs=0.005)


def test_scores_hand_computed_pixel_errors_and_calibrated_spread_skill():
    truth = np.full((1, 2, 2), 3.0)
    truth[0, 0, 0] = 12.0
    draws = np.stack([truth, truth.copy()], axis=1)
    draws[0, 1, 1, 1] = 12.0  # one wrong pixel of 8 in the draws; the mean there is 7.5: not above the threshold
    s = scores(draws, truth, binary=True)
    assert s["pixel_draw"] == pytest.approx(1 / 8) and s["pixel_mean"] == 0.0
    # spread/skill: variance 40.5 (ddof 1) at one of 4 points, squared error of the mean 20.25 there
    assert s["spread_skill"] == pytest.approx(math.sqrt(1.5 * 40.5 / 4) / math.sqrt(20.25 / 4))
    assert s["rel_l2_draw"] == pytest.approx(9 / math.sqrt(144 + 27) / 2)


def _denoiser(x, sigma):  # nonlinear, row by row, with cross-channel coupling
    s = sigma.reshape(-1, 1, 1, 1)
    return torch.tanh(0.7 * x + 0.3 * x.roll(1, dims=1) + 0.2 * x.roll(1, dims=-1)) / (1 + s**2)


@pytest.mark.parametrize("method", ["dps", "mmps", "residual"])
def test_case_sensors_give_each_row_the_guidance_of_its_case_alone(method):
    """Batched cases (CaseSensors, y = 0) equal separate runs with SparseSensors and each case's y."""
    torch.manual_seed(0)
    n, draws, channel = 6, 2, 1
    points = np.array([[1, 2], [3, 3], [4, 0], [5, 5]])
    y = torch.randn(3, len(points), dtype=torch.float64)
    x = torch.randn(3 * draws, 2, n, n, dtype=torch.float64)
    sigma = torch.full((3 * draws,), 0.8, dtype=torch.float64)
    std = 0.3

    def guided(op, yy):
        obs = Observation(op, yy, std, (2, n, n), dtype=torch.float64)
        if method == "residual":
            return ResidualGuidance(_denoiser, obs, residual=lambda z: z[:, 0] - z[:, 1] ** 2, zeta_obs=2.0, zeta_pde=0.7)
        return {"dps": lambda: DPS(_denoiser, obs, zeta=2.0), "mmps": lambda: MMPS(_denoiser, obs, cg_iters=3)}[method]()

    batched = guided(CaseSensors(points, channel, y, draws), torch.zeros(len(points)))(x, sigma)
    for k in range(3):
        rows = slice(k * draws, (k + 1) * draws)
        alone = guided(SparseSensors((n, n), points=points, channels=[channel]), y[k, None])(x[rows], sigma[rows])
        torch.testing.assert_close(batched[rows], alone, rtol=1e-10, atol=1e-12)
