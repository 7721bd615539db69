"""A rollout that blows up says so: one RuntimeWarning naming the variable, the step and the growth."""

import warnings

import numpy as np
import pytest
import xarray as xr

from sciffusion.emulators import Rollout
from sciffusion.emulators.rollout_base import RolloutCoder


class GrowthDenoiser:
    """Exact denoiser of a deterministic normalised increment: ``x(t+1) = growth * x(t)`` (std 1, mean 0)."""

    sigma_data = 1.0

    def __init__(self, growth):
        self.growth = growth

    def __call__(self, z, sigma, cond=None):
        return (self.growth - 1) * cond[:, :1]


def model(growth):
    coder = RolloutCoder(["x"], ["site"], [4], mean={"x": 0.0}, std={"x": 1.0}, inc_mean={"x": 0.0},
                         inc_std={"x": 1.0}, dt=1.0, grid={"site": [0, 1, 2, 3]})
    return Rollout(GrowthDenoiser(growth), coder, sampler={"steps": 2})


def initial(value):
    return xr.Dataset({"x": ("site", np.full(4, value))}, coords={"site": np.arange(4)})


def test_a_rollout_growing_past_ten_times_its_scale_warns_once_naming_variable_step_and_growth():
    with pytest.warns(RuntimeWarning) as caught:
        out = model(2.0).rollout(initial(1.0), 10, n_members=2, progress=False)
    blowups = [w for w in caught if "blowing up" in str(w.message)]
    assert len(blowups) == 1, [str(w.message) for w in caught]
    msg = str(blowups[0].message)
    assert "'x'" in msg and "step 4 (time = 4.0)" in msg and "16x" in msg, msg  # 2**4 = 16 > 10
    assert "left the attractor" in msg and "train it longer" in msg, msg
    assert blowups[0].filename == __file__, blowups[0].filename  # points at the caller's line
    np.testing.assert_allclose(out.x.values[0, -1], 2.0**10)  # the rollout itself is not changed
    for start in (1.0, 30.0):  # persistence never warns, also from a state far off the training scale
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            np.testing.assert_allclose(model(1.0).rollout(initial(start), 10, progress=False).x.values, start)
