"""The Downscaler's noise temperature: at 1 it is the sampler of before, bit for bit; at T the
starting draw is T * sigmas[0] * eps on the teacher's levels and on a distilled student's own
levels; it is saved and loaded with the sampler (a checkpoint without one samples at 1);
``calibrate(temperatures=...)`` picks the value a hand computation picks, keeping the student's
levels and eta; a temperature that is not > 0 is refused before any sampling."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.diffusion.schedules import SIGMA_MAX
from sciffusion.distill import Student
from sciffusion.emulators import Downscaler, coarsen, generate
from sciffusion.emulators.downscale_data import stack
from sciffusion.emulators.downscaler import _sampler_options


class Recording(torch.nn.Module):
    """A denoiser around a function of ``(x, sigma, cond)`` that records every input ``(x, sigma)``."""

    def __init__(self, fn, sigma_data=1.0):
        super().__init__()
        self.fn, self.sigma_data, self.seen = fn, sigma_data, []

    def forward(self, x, sigma, cond=None, **kw):
        self.seen.append((x.clone(), sigma.clone()))
        return self.fn(x, sigma, cond)


def affine(x, sigma, cond):
    """Affine in x: the condition's first channel plus x / sigma (any map works; this one keeps the spread order 1)."""
    return cond[:, :1] + x / sigma.view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    fine = xr.Dataset({"w": (("time", "y", "x"), rng.normal(size=(16, 8, 8)).astype("float32"), {"units": "1"})},
                      coords={"time": np.arange(16), "y": np.arange(8.0), "x": np.arange(8.0)})
    model = Downscaler.fit(fine.isel(time=slice(0, 8)), factor=2, steps=1, batch_size=4, progress=False,
                           net={"kwargs": {"channels": [8, 8], "groups": 4}})
    val = fine.isel(time=slice(8, None))
    return model, val, coarsen(val, 2)


def _before(model, coarse, n, seed, settings):
    """The members as downscale drew them before the knob: generate with the method name, then decode."""
    c = model.coder
    up = c.upsample(stack(c.dataset(coarse), c.variables, c.sample_dim, c.grid_dims))
    z = generate(model.denoiser, c.condition(up), n, event_shape=(c.channels, *c.grid_shape), seed=seed, batch_size=64,
                 steps=int(settings["steps"]), method=settings["method"], progress=False, sigma_max=SIGMA_MAX,
                 **_sampler_options(settings))
    return c.decode(z.numpy(), up)[:, :, 0]


@pytest.mark.parametrize("settings", [{}, {"method": "heun", "steps": 3}, {"method": "dpmpp2m", "steps": 3},
                                      {"method": "stochastic", "steps": 3, "s_noise": 1.2}, "student"])
def test_temperature_one_is_the_sampler_of_before_bit_for_bit(tiny, settings):
    model, _, coarse = tiny
    if settings == "student":
        model, settings = model.with_student(Student(model.denoiser, torch.tensor([40.0, 1.5, 0.0]))), {}
    full = {**model.sampler, **settings}
    if full["method"] == "stochastic":
        full["churn"] = 40.0
    plain = model.downscale(coarse, 3, seed=1, progress=False, **settings)
    at_one = model.downscale(coarse, 3, seed=1, progress=False, temperature=1.0, **settings)
    assert np.array_equal(plain.w.values, _before(model, coarse, 3, 1, full))
    assert np.array_equal(at_one.w.values, plain.w.values)
    assert "temperature" not in json.loads(at_one.attrs["sampler"])  # the record of before, too


def _record(model, coarse, temperature, n=3):
    den = model.denoiser
    den.seen.clear()
    out = model.downscale(coarse, n, seed=2, progress=False, temperature=temperature).w.values
    return out, list(den.seen)


def test_a_one_call_student_at_temperature_t_is_its_denoiser_at_t_sigma_max_noise(tiny):
    """One DDIM step from sigma_max to 0 returns D(x, sigma_max): at temperature 1.3 the member is
    exactly the denoiser applied to 1.3 times the temperature-1 start, decoded."""
    model, _, coarse = tiny
    fast = model.with_student(Student(Recording(affine), torch.tensor([80.0, 0.0])))
    _, [(x1, s1)] = _record(fast, coarse, 1.0)
    got, [(xt, st)] = _record(fast, coarse, 1.3)
    assert float(s1[0]) == float(st[0]) == 80.0
    assert torch.equal(xt, x1 * 1.3)
    c = fast.coder
    up = c.upsample(stack(c.dataset(coarse), c.variables, c.sample_dim, c.grid_dims))
    cond = c.condition(up).repeat_interleave(3, 0)  # jobs are (field, member), members fastest
    want = c.decode(affine(1.3 * x1, st, cond).reshape(len(up), 3, 1, 8, 8).numpy(), up)[:, :, 0]
    assert np.array_equal(got, want)
    assert not np.allclose(got, fast.downscale(coarse, 3, seed=2, progress=False).w.values)


@pytest.mark.parametrize("levels", [None, [40.0, 1.5, 0.0]])
def test_the_start_is_scaled_at_the_first_level_of_the_teacher_and_of_a_student(tiny, levels):
    """The teacher (DDIM 16 from sigma_max 80) and a 2-call student on its own levels [40, 1.5, 0]
    (a first level that is not sigma_max): only the first network input is T times the plain one."""
    model, _, coarse = tiny
    model = Downscaler(Recording(affine), model.coder)
    if levels is not None:
        model = model.with_student(Student(Recording(affine), torch.tensor(levels)))
    _, plain = _record(model, coarse, 1.0)
    _, hot = _record(model, coarse, 1.6)
    first = 80.0 if levels is None else levels[0]
    assert [float(s[0]) for _, s in hot] == [float(s[0]) for _, s in plain]
    assert float(hot[0][1][0]) == first and (levels is None or [float(s[0]) for _, s in hot] == levels[:2])
    assert torch.equal(hot[0][0], 1.6 * plain[0][0])


def test_the_temperature_is_saved_and_a_checkpoint_without_one_samples_at_one(tiny, tmp_path):
    model, _, coarse = tiny
    hot = Downscaler(model.denoiser, model.coder, sampler={**model.sampler, "temperature": 1.3})
    loaded = Downscaler.load(hot.save(tmp_path / "hot"))
    assert loaded.sampler["temperature"] == 1.3
    a = hot.downscale(coarse, 2, progress=False).w.values
    assert np.array_equal(loaded.downscale(coarse, 2, progress=False).w.values, a)
    model.save(tmp_path / "old")  # the default sampler has no temperature key: a checkpoint of before
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert "temperature" not in config["downscaler"]["sampler"]
    old = Downscaler.load(tmp_path / "old").downscale(coarse, 2, progress=False).w.values
    assert np.array_equal(old, model.downscale(coarse, 2, progress=False, temperature=1.0).w.values)
    assert not np.array_equal(old, a)


def _hand_ssr(members, truth):
    """sqrt((M+1)/M * mean ensemble variance) / RMSE of the ensemble mean, by hand."""
    m = members.shape[1]
    spread = np.sqrt((m + 1) / m * members.var(axis=1, ddof=1).mean())
    return spread / np.sqrt(((members.mean(axis=1) - truth) ** 2).mean())


def test_calibrate_picks_the_temperature_a_hand_computation_picks_and_keeps_the_students_levels(tiny):
    """A 1-call student with a denoiser affine in x: its members at T are exactly m1 + (T - 1)(m2 - m1)
    from those at 1 and 2. The spread-skill of each T by hand decides; calibrate must agree."""
    model, val, coarse = tiny
    levels = [80.0, 0.0]
    fast = model.with_student(Student(Recording(affine), torch.tensor(levels)))
    grid, target = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0), 1.4
    m1, m2 = (fast.downscale(coarse, 4, progress=False, temperature=t).w.values.astype(np.float64) for t in (1.0, 2.0))
    truth = val.w.values.astype(np.float64)
    hand = {t: _hand_ssr(m1 + (t - 1) * (m2 - m1), truth) for t in grid}
    pick = min(grid, key=lambda t: abs(hand[t] - target))
    assert pick not in (grid[0], 1.0, grid[-1]), hand  # the test needs an interior value that is not the default
    table = fast.calibrate(coarse, val, steps=(1,), etas=(0.0,), temperatures=grid, target=target, n_members=4)
    np.testing.assert_allclose(table["ssr"], [hand[t] for t in grid], rtol=1e-5)
    assert float(table.loc[table.chosen, "temperature"].iloc[0]) == pick
    assert fast.sampler == {"method": "ddim", "steps": 1, "eta": 0.0, "temperature": pick, "sigmas": levels}
    assert "temperature" not in model.sampler  # the teacher is untouched


@pytest.mark.parametrize("bad,error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                       ("hot", TypeError)])
def test_a_temperature_that_is_not_positive_is_refused_before_sampling(tiny, bad, error):
    model, val, coarse = tiny
    counted = Downscaler(Recording(affine), model.coder)
    with pytest.raises(error, match="temperature must be"):
        counted.downscale(coarse, 2, progress=False, temperature=bad)
    with pytest.raises(error, match="every value of temperatures must be"):
        counted.calibrate(coarse, val, steps=(2,), etas=(0.0,), temperatures=(1.0, bad))
    with pytest.raises(error, match=r"sampler\['temperature'\] must be"):
        Downscaler(counted.denoiser, model.coder, sampler={"temperature": bad})
    assert counted.denoiser.seen == []
