"""Distillation: a few-call student of the exact Gaussian-mixture denoiser samples the mixture better
than the teacher's own sampler at the same number of calls, keeps its noise levels through a
checkpoint, and a distillation run resumes instead of starting again."""

import pytest
import torch

from sciffusion.data.batches import TensorPairs
from sciffusion.diffusion import CountingDenoiser, Denoiser, sample
from sciffusion.distill import Student, distill, teacher_trajectories
from sciffusion.nets import MLP
from sciffusion.testing import GaussianMixture, SlicedWasserstein, grid_mixture

SIGMA_MAX = 2000.0


def two_modes() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-4.0, 0.0], [4.0, 2.0]]), 0.5)


def test_teacher_trajectories_follow_the_exact_ode_and_end_on_the_mixture():
    """With the exact denoiser and many levels the kept end states are samples of the mixture (SW
    near the two-sample floor), and the first kept state is the scaled start noise."""
    gm = two_modes()
    from sciffusion.diffusion import karras_sigmas

    sig = karras_sigmas(64, sigma_max=SIGMA_MAX)
    states = teacher_trajectories(gm, sig, 32, 1000, (2,), dtype=torch.float64)
    assert states.shape == (1000, 3, 2)
    assert abs(float(states[:, 0].std()) / SIGMA_MAX - 1) < 0.1
    sw = SlicedWasserstein(gm.sample(1000, torch.Generator().manual_seed(1)), 500)
    floor = sw(gm.sample(1000, torch.Generator().manual_seed(2)))
    assert sw(states[:, -1]) < 3 * floor


def test_a_two_call_student_beats_the_teachers_own_two_call_sampler():
    """The point of distillation: at 2 network calls the student is closer to the mixture than DDIM
    with the exact denoiser at 2 calls, and it makes exactly 2 calls per sample."""
    gm = two_modes()
    data = TensorPairs(gm.sample(4000, torch.Generator().manual_seed(0)).float())
    student = Denoiser(MLP(2, width=64, depth=2), sigma_data=float(data.x.std()))
    st = distill(gm, data, calls=2, teacher_steps=16, student=student, n_trajectories=4000, steps=600,
                 batch_size=256, lr=1e-3, warmup_steps=20, ema_decay=0.99, sigma_max=SIGMA_MAX, progress=False, threads=1)
    assert st.calls == 2 and st.sampler["method"] == "ddim"
    sw = SlicedWasserstein(gm.sample(2000, torch.Generator().manual_seed(1)), 500)
    counted = CountingDenoiser(st)
    with torch.no_grad():
        x = sample(counted, (2000, 2), generator=torch.Generator().manual_seed(5), **st.sampler)
    teacher = sample(gm, (2000, 2), generator=torch.Generator().manual_seed(5), **{**st.sampler, "sigmas": st.sigmas})
    assert counted.nfe == 2
    assert sw(x) < 0.5 * sw(teacher), (sw(x), sw(teacher))


def test_student_checkpoint_round_trips_and_a_finished_run_is_not_trained_again(tmp_path):
    gm = two_modes()
    data = TensorPairs(gm.sample(512, torch.Generator().manual_seed(0)).float())
    kw = dict(calls=1, teacher_steps=4, n_trajectories=256, steps=6, batch_size=64, warmup_steps=2,
              sigma_max=SIGMA_MAX, progress=False, out_dir=tmp_path / "run")
    first = distill(gm, data, student=Denoiser(MLP(2, width=16, depth=1)), **kw)
    again = distill(gm, data, student=Denoiser(MLP(2, width=16, depth=1)), **kw)  # resumes the finished run
    loaded = Student.load(tmp_path / "run" / "student")
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    for other in (again, loaded):
        torch.testing.assert_close(other(x, torch.tensor(3.0)), first(x, torch.tensor(3.0)), rtol=0, atol=0)
        torch.testing.assert_close(other.sigmas, first.sigmas, rtol=0, atol=0)


def test_trajectories_on_a_models_own_heun_levels_end_where_its_sampler_ends():
    """A 6-level Heun sampler from sigma_max 10 (a rollout emulator's default: 11 calls) kept every 3rd
    level (a 2-call student's levels): the last kept state is, to float64 rounding, the sample that
    ``sample(method="heun", steps=6, sigma_max=10)`` draws from the same start noise, so a student
    distilled on these levels learns that sampler's own map from noise to sample."""
    from sciffusion.diffusion import karras_sigmas

    gm = two_modes()
    sig = karras_sigmas(6, 0.002, 10.0)
    states = teacher_trajectories(gm, sig, 3, 64, (2,), seed=5, dtype=torch.float64)
    assert states.shape == (64, 3, 2)
    direct = sample(gm, (64, 2), method="heun", steps=6, sigma_min=0.002, sigma_max=10.0, x=states[:, 0].clone(),
                    dtype=torch.float64)
    torch.testing.assert_close(states[:, -1], direct, rtol=1e-12, atol=1e-12)
    mid = sample(gm, (64, 2), sigmas=sig[:4], method="heun", x=states[:, 0].clone(), dtype=torch.float64)  # 3 steps
    torch.testing.assert_close(states[:, 1], mid, rtol=1e-12, atol=1e-12)
    # a model whose default sampler is DPM-Solver++(2M): its multistep state carries across the kept levels
    states = teacher_trajectories(gm, sig, 3, 64, (2,), seed=5, dtype=torch.float64, method="dpmpp2m")
    direct = sample(gm, (64, 2), method="dpmpp2m", steps=6, sigma_min=0.002, sigma_max=10.0, x=states[:, 0].clone(),
                    dtype=torch.float64)
    torch.testing.assert_close(states[:, -1], direct, rtol=1e-12, atol=1e-12)
    assert (states[:, -1] - sample(gm, (64, 2), method="heun", steps=6, sigma_max=10.0, x=states[:, 0].clone(),
                                   dtype=torch.float64)).abs().max() > 1e-3  # (another map than Heun's)


def test_a_trajectory_student_takes_levels_that_are_not_a_power_of_two_apart():
    """teacher_steps = 6, calls = 2 (every 3rd level) trains, and the student's noise levels are the
    teacher's Karras levels 0, 3 and 6; progressive distillation still needs a power of two."""
    from sciffusion.diffusion import karras_sigmas

    gm = two_modes()
    data = TensorPairs(gm.sample(64, torch.Generator().manual_seed(0)).float())
    st = distill(gm, data, student=Denoiser(MLP(2, width=8, depth=1)), calls=2, teacher_steps=6, sigma_max=10.0,
                 n_trajectories=32, steps=2, batch_size=8, progress=False)
    torch.testing.assert_close(st.sigmas, karras_sigmas(6, 0.002, 10.0)[::3], rtol=0, atol=0)
    assert st.calls == 2
    with pytest.raises(ValueError, match="power of two"):
        distill(gm, data, student=Denoiser(MLP(2, width=8, depth=1)), calls=2, teacher_steps=6, method="progressive",
                steps=1, progress=False)


@pytest.mark.parametrize("kwargs,needle", [({"calls": 3}, "multiple of calls"), ({"calls": 4, "teacher_steps": 6}, "multiple"),
                                           ({"calls": 3, "teacher_steps": 3}, "at least twice"),
                                           ({"method": "consistency"}, "method"), ({"student": None}, "student="),
                                           ({"method": "schedule", "calls": 1}, "calls >= 2"),
                                           ({"method": "schedule", "calls": 2}, "no student="),
                                           ({"teacher_method": "stochastic"}, "teacher_method"),
                                           ({"method": "progressive", "teacher_method": "dpmpp2m"}, "DDIM steps"),
                                           ({"teacher_start": "centred"}, "teacher_start")])
def test_bad_settings_are_refused_naming_them(kwargs, needle):
    gm = two_modes()
    data = TensorPairs(gm.sample(64, torch.Generator().manual_seed(0)).float())
    with pytest.raises(ValueError, match=needle):
        distill(gm, data, **{"student": Denoiser(MLP(2, width=8, depth=1)), "steps": 1, "progress": False, **kwargs})


def test_a_schedule_student_keeps_the_network_and_learns_levels_closer_to_the_teachers_map():
    """method="schedule" (LD3): the network is the teacher's, untouched; the learned 3-call DPM-Solver++(2M)
    levels start at sigma_max, decrease to 0, make 3 calls per sample, and land nearer the teacher's ODE
    end state from the same fresh noise than the same solver on Karras levels (here by half); sampling
    with them is exactly the solver the levels were fitted through."""
    from sciffusion.diffusion import karras_sigmas
    from sciffusion.distill import solve

    gm = two_modes()
    data = TensorPairs(gm.sample(64, torch.Generator().manual_seed(0)).float())
    student = distill(gm, data, calls=3, method="schedule", teacher_steps=32, sigma_max=80.0, n_trajectories=512,
                      steps=150, progress=False)
    lv = student.sigmas
    assert student.method == "dpmpp2m" and student.denoiser is gm  # (not a module: used as it is)
    assert lv[0] == 80.0 and lv[-1] == 0 and bool((lv[1:] < lv[:-1]).all()) and student.calls == 3
    z = 80.0 * torch.randn((2000, 2), generator=torch.Generator().manual_seed(9), dtype=torch.float64).float()
    end = teacher_trajectories(gm, karras_sigmas(32, sigma_max=80.0), 32, 2000, (2,), seed=9)[:, -1]
    counted = CountingDenoiser(student)
    got = sample(counted, (2000, 2), x=z.clone(), **student.sampler)
    assert counted.nfe == 3
    torch.testing.assert_close(got, solve(gm, z.clone(), lv, "dpmpp2m"), rtol=0, atol=0)
    karras = sample(gm, (2000, 2), x=z.clone(), method="dpmpp2m", steps=3, sigma_max=80.0)
    assert float((got - end).pow(2).mean()) < 0.5 * float((karras - end).pow(2).mean())


def test_a_centred_schedule_student_shares_its_teachers_centred_start_and_counts_it_as_a_call():
    """teacher_start="centred": the teacher's trajectories end where sample(start="centred") ends from the
    kept draw s z, and a 3-call student is a centred start at its own learned top level plus 2 learned
    steps; sampled through its own sampler dict it makes 3 calls and lands exactly where the fitted
    solver does from that start (s z + D(s z, s), by hand)."""
    from sciffusion.diffusion import karras_sigmas
    from sciffusion.distill import solve

    gm = GaussianMixture(torch.tensor([1.0]), torch.tensor([[6.0, -3.0]]), 0.5)  # a narrow law far from 0
    sig = karras_sigmas(8, 0.002, 10.0)
    states = teacher_trajectories(gm, sig, 8, 16, (2,), seed=3, dtype=torch.float64, method="dpmpp2m", start="centred")
    z = 10.0 * torch.randn((16, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(states[:, 0], z, rtol=1e-12, atol=1e-12)  # (karras_sigmas(...)[0] is 10 to rounding)
    direct = sample(gm, (16, 2), method="dpmpp2m", steps=8, sigma_max=10.0, start="centred", dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(states[:, -1], direct, rtol=1e-12, atol=1e-12)
    data = TensorPairs(gm.sample(64, torch.Generator().manual_seed(0)).float())
    st = distill(gm, data, calls=3, method="schedule", teacher_method="dpmpp2m", teacher_steps=8, sigma_max=10.0,
                 teacher_start="centred", n_trajectories=64, steps=20, progress=False)
    assert (st.start, st.steps, st.calls) == ("centred", 2, 3) and st.sampler["start"] == "centred"
    assert 10.0 > float(st.sigmas[0]) > float(st.sigmas[1]) > 0 == float(st.sigmas[2])  # the top is learned too
    counted = CountingDenoiser(st)
    g = torch.Generator().manual_seed(4)
    got = sample(counted, (32, 2), generator=g, **st.sampler)
    assert counted.nfe == 3
    z = float(st.sigmas[0]) * torch.randn((32, 2), generator=torch.Generator().manual_seed(4))
    x0 = z + gm(z, torch.full((32,), float(st.sigmas[0])))
    torch.testing.assert_close(got, solve(gm, x0, st.sigmas, "dpmpp2m"), rtol=0, atol=1e-6)


def test_a_schedule_run_resumes_exactly_and_keeps_its_solver_through_a_checkpoint(tmp_path):
    """A schedule run stopped at 20 steps and resumed to 40 learns the same levels, bit for bit, as one
    run of 40; the student checkpoint keeps its solver and levels (an old DDIM checkpoint without a
    method still loads as DDIM); trajectories cached by another method are refused, naming the file."""
    import json

    net = Denoiser(MLP(2, width=8, depth=1))
    data = TensorPairs(two_modes().sample(64, torch.Generator().manual_seed(0)).float())
    kw = dict(calls=2, method="schedule", teacher_steps=8, n_trajectories=32, batch_size=8, progress=False)
    distill(net, data, steps=20, out_dir=tmp_path / "a", **kw)
    resumed = distill(net, data, steps=40, out_dir=tmp_path / "a", **kw)
    straight = distill(net, data, steps=40, out_dir=tmp_path / "b", **kw)
    torch.testing.assert_close(resumed.sigmas, straight.sigmas, rtol=0, atol=0)
    loaded = Student.load(tmp_path / "a" / "student")
    assert loaded.sampler == {"method": "dpmpp2m", "sigmas": resumed.sigmas.tolist(), "start": "noise"}
    torch.testing.assert_close(loaded.denoiser.state_dict(), net.state_dict(), rtol=0, atol=0)  # the teacher's network
    config = tmp_path / "a" / "student" / "config.json"
    spec = json.loads(config.read_text())
    del spec["student"]["method"]
    config.write_text(json.dumps(spec))
    assert Student.load(tmp_path / "a" / "student").sampler["method"] == "ddim"
    with pytest.raises(ValueError, match="trajectories.safetensors holds teacher states at 2 levels"):
        distill(net, data, calls=2, teacher_steps=8, n_trajectories=32, batch_size=8, steps=1, out_dir=tmp_path / "a",
                progress=False)


class _Wrapped(torch.nn.Module):
    """A denoiser module around a plain function, as a distilled network stands in for its teacher."""

    def __init__(self, fn, sigma_data=1.0):
        super().__init__()
        self.fn, self.sigma_data = fn, sigma_data

    def forward(self, x, sigma, cond=None, **kw):
        return self.fn(x, sigma, cond=cond, **kw)


def test_emulators_given_a_student_sample_with_its_calls_and_noise_levels():
    """with_student swaps in the student's network and its schedule: the ensemble equals the same
    emulator run with DDIM on the student's levels, at the student's number of calls; Rollout too."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_emulator_ensemble import exact_standard_normal, gaussian_emulator, seeds_dataset
    from test_rollout import AR1Denoiser, ar1_coder, initial

    from sciffusion.emulators import Rollout

    levels = torch.tensor([80.0, 1.5, 0.0], dtype=torch.float64)
    emu, seeds = gaussian_emulator(), seeds_dataset(n_init=2)
    counted = CountingDenoiser(_Wrapped(exact_standard_normal))
    fast = emu.with_student(Student(counted, levels))
    got = fast.generate(seeds, 8, batch_size=4096, progress=False)
    assert counted.nfe == 2 and fast.sampler["steps"] == 2 and emu.sampler["steps"] == 18  # the teacher is untouched
    want = emu.generate(seeds, 8, batch_size=4096, progress=False, method="ddim", steps=2, eta=0.0, sigmas=levels.tolist())
    torch.testing.assert_close(torch.as_tensor(got.x.values), torch.as_tensor(want.x.values), rtol=0, atol=0)
    assert got.attrs["checkpoint_sha256"] == ""  # not the teacher's weights

    model = Rollout(AR1Denoiser(), ar1_coder(), sampler={"steps": 6})
    student = model.with_student(Student(_Wrapped(AR1Denoiser()), levels))
    a = student.rollout(initial(), 3, n_members=2, seed=1, progress=False).x.values
    b = model.rollout(initial(), 3, n_members=2, seed=1, progress=False, steps=2, method="ddim", eta=0.0,
                      sigmas=levels.tolist()).x.values
    assert (a == b).all()
    with pytest.raises(ValueError, match="sigma_data"):
        model.with_student(Student(_Wrapped(AR1Denoiser(), sigma_data=0.5), levels))
    scheduled = model.with_student(Student(_Wrapped(AR1Denoiser()), levels, method="dpmpp2m"))  # a learned schedule
    assert "eta" not in scheduled.sampler and scheduled.sampler["method"] == "dpmpp2m"
    a = scheduled.rollout(initial(), 3, n_members=2, seed=1, progress=False).x.values
    b = model.rollout(initial(), 3, n_members=2, seed=1, progress=False, steps=2, method="dpmpp2m",
                      sigmas=levels.tolist()).x.values
    assert (a == b).all()


def test_cli_distills_a_trained_run_and_sample_uses_the_students_calls(tmp_path, capsys):
    """`sciffusion distill RUN -o FAST --calls 1` writes a student that `sciffusion sample` draws with
    one call per member (its own schedule), refuses other sampler settings for it, and a rerun
    resumes the finished run instead of training again."""
    import sys
    from pathlib import Path

    import xarray as xr

    sys.path.insert(0, str(Path(__file__).parent))
    import json

    from _tiny import train_tiny

    from sciffusion.cli import main

    tmp = train_tiny(tmp_path, n_time=12, channels=[8], steps=1, batch_size=4)
    args = ["distill", str(tmp / "run"), "-o", str(tmp / "fast"), "--calls", "1", "--teacher-steps", "4",
            "--steps", "2", "--trajectories", "8", "--batch-size", "4", "--no-progress"]
    assert main(args) == 0
    before = Student.load(tmp / "fast" / "student")
    assert before.calls == 1
    assert main(args) == 0  # the finished run resumes: the same student
    torch.testing.assert_close(Student.load(tmp / "fast" / "student").denoiser.state_dict(), before.denoiser.state_dict(),
                               rtol=0, atol=0)
    capsys.readouterr()
    sample = ["sample", str(tmp / "fast" / "student"), str(tmp / "data.zarr"), "--members", "2", "--cases", "0",
              "--no-progress"]
    assert main([*sample, "-o", str(tmp / "a.zarr")]) == 0
    out = xr.open_zarr(tmp / "a.zarr")
    assert out["u"].sizes["member"] == 2 and '"sigmas"' in out.attrs["sampler"]
    assert main([*sample, "-o", str(tmp / "b.zarr"), "--steps", "18"]) == 2
    assert "distilled student" in capsys.readouterr().err
    sched = ["distill", str(tmp / "run"), "-o", str(tmp / "sched"), "--method", "schedule", "--teacher-steps", "4",
             "--steps", "2", "--trajectories", "8", "--batch-size", "4", "--no-progress"]
    assert main([*sched, "--calls", "1"]) == 2 and "--calls >= 2" in capsys.readouterr().err
    assert main(sched) == 0  # --calls 2 by default
    assert main(["sample", str(tmp / "sched" / "student"), *sample[2:], "-o", str(tmp / "c.zarr")]) == 0
    assert json.loads(xr.open_zarr(tmp / "c.zarr").attrs["sampler"])["method"] == "dpmpp2m"


def test_a_student_keeps_its_teachers_temperature_until_calibrated_and_calibrating_it_leaves_the_teacher():
    """with_student keeps the temperature calibrated for the teacher's sampler, though the student's
    spread differs: DDIM with the exact N(0, 1) denoiser on levels [80, 1.5, 0] draws members with
    std 0.4653 x temperature (x_1 = 121/6401 x_80, x_0 = x_1 / 3.25), where the 18-step Heun teacher
    draws std 1 x temperature. Against a truth of spread 1.5 the teacher calibrates to ~1.5; the
    student at that temperature is under-dispersed (spread-skill ~0.47), and calibrate_spread on the
    student copy finds its own ~1.5 / 0.4653 = 3.22, without touching the teacher's sampler."""
    import sys
    from pathlib import Path

    import numpy as np
    import xarray as xr

    sys.path.insert(0, str(Path(__file__).parent))
    from test_emulator_ensemble import DEV, LEADS, exact_standard_normal, gaussian_emulator, seeds_dataset

    from sciffusion.emulators import calibrate_spread

    emu, seeds = gaussian_emulator(), seeds_dataset(n_init=60)
    rng = np.random.default_rng(3)
    d = xr.DataArray(DEV, dims="lead_time", coords={"lead_time": LEADS})
    truth = (seeds["x"].mean("member") + 1.5 * d * xr.DataArray(rng.normal(size=(60, 2, 8)),
                                                               dims=("init_time", "lead_time", "k"))).to_dataset(name="x")
    kw = dict(n_members=16, batch_size=4096)
    teacher = calibrate_spread(emu, seeds, truth, **kw)
    assert abs(teacher.value - 1.5) < 0.15 and abs(teacher.ssr - 1) < 0.05
    fast = emu.with_student(Student(_Wrapped(exact_standard_normal), torch.tensor([80.0, 1.5, 0.0], dtype=torch.float64)))
    assert fast.sampler["temperature"] == teacher.value  # kept, as documented
    with pytest.warns(UserWarning, match="edge of the grid"):  # one value: only its ratio is wanted
        kept = calibrate_spread(fast, seeds, truth, values=(teacher.value,), refine=False, apply=False, **kw)
    assert abs(kept.ssr - 0.4653) < 0.05, kept.ssr  # the teacher's temperature is wrong for the student
    own = calibrate_spread(fast, seeds, truth, values=(1.0, 2.0, 3.0, 4.0, 5.0), **kw)
    assert abs(own.value - 1.5 / 0.4653) < 0.3 and abs(own.ssr - 1) < 0.05, own
    assert fast.sampler["temperature"] == own.value and emu.sampler["temperature"] == teacher.value


def test_calibrating_a_downscaler_student_keeps_its_noise_levels_and_refuses_other_step_counts():
    """Downscaler.calibrate on a with_student copy chooses eta among the student's own levels: the
    applied sampler keeps them (before the fix it fell back to karras_sigmas(2) = [80, 0.002, 0], a
    schedule the student never saw), so its members differ from the 2-step DDIM ones on the
    teacher's Karras levels; step counts or EDM-stochastic rows the student cannot run are refused
    before any sampling."""
    import numpy as np
    import xarray as xr

    from sciffusion.emulators import Downscaler, coarsen

    rng = np.random.default_rng(0)
    fine = xr.Dataset({"w": (("time", "y", "x"), rng.normal(size=(12, 8, 8)).astype("float32"), {"units": "1"})},
                      coords={"time": np.arange(12), "y": np.arange(8.0), "x": np.arange(8.0)})
    model = Downscaler.fit(fine.isel(time=slice(0, 8)), factor=2, steps=1, batch_size=4, progress=False,
                           net={"kwargs": {"channels": [8, 8], "groups": 4}})
    levels = [80.0, 1.5, 0.0]
    fast = model.with_student(Student(model.denoiser, torch.tensor(levels, dtype=torch.float64)))
    val = fine.isel(time=slice(8, None))
    table = fast.calibrate(coarsen(val, 2), val, steps=(2,), etas=(0.0, 1.0), n_members=2)
    assert fast.sampler["sigmas"] == levels and fast.sampler["steps"] == 2
    eta = float(table.loc[table.chosen, "eta"].iloc[0])
    got = fast.downscale(coarsen(val, 2), 2, seed=1, progress=False).w.values
    want = model.downscale(coarsen(val, 2), 2, seed=1, progress=False, method="ddim", steps=2, eta=eta).w.values
    assert fast.sampler["eta"] == eta and not np.array_equal(got, want)  # model's own karras levels differ
    with pytest.raises(ValueError, match=r"its own 2-call noise levels: calibrate it with steps=\(2,\)"):
        fast.calibrate(coarsen(val, 2), val, steps=(2, 4))
    with pytest.raises(ValueError, match="DDIM etas only"):
        fast.calibrate(coarsen(val, 2), val, steps=(2,), s_noises=(1.0,))
    scheduled = model.with_student(Student(model.denoiser, torch.tensor(levels, dtype=torch.float64), method="dpmpp2m"))
    with pytest.raises(ValueError, match="learned-schedule student"):  # DDIM rows on levels fitted for DPM-Solver++(2M)
        scheduled.calibrate(coarsen(val, 2), val, steps=(2,), etas=(0.0,))
