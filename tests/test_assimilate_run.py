"""sciffusion.assimilate.assimilate and cycle_scores: xarray in and out, resume after a kill bit for bit,
refused resumes and bad inputs naming the culprit, scores against a hand-computed case."""

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.assimilate import assimilate, cycle, cycle_scores, plot_cycle_scores, truth_and_observations
from sciffusion.assimilate import run as run_module
from sciffusion.inverse import Mask
from sciffusion.systems.lorenz96 import Lorenz96

K, N, T = 8, 5, 6
FAST = {"steps": 4, "cg_iters": 2}


def _problem(noise_std=0.0, every=1):
    model = Lorenz96(k=K, noise_std=noise_std)
    mask = torch.zeros(K, dtype=torch.bool)
    mask[::every] = True
    op = Mask(mask)
    initial, obs, truth = truth_and_observations(model, op, n_cycles=T, interval=0.1, noise_std=0.5, spinup=1.0, seed=3)
    return model, op, initial, obs, truth


def _run(problem, **kw):
    model, op, initial, obs, truth = problem
    options = {"n_members": N, "perturbation": 1.0, "seed": 7, "truth": truth, "progress": False, **FAST, **kw}
    return assimilate(model, initial, obs, operator=op, noise_std=0.5, **options)


@pytest.mark.parametrize("block, kill_at", [(1, 3), (2, 3), (4, 5)])
def test_a_killed_run_resumed_equals_the_uninterrupted_run_bit_for_bit(tmp_path, block, kill_at):
    """Stochastic model (per-member model noise) and fresh posterior draws (start="noise"): every random
    draw is used; killed at cycle ``kill_at`` (mid-block for block 2 and 4), resumed, the stored analysis,
    forecast and truth equal those of an uninterrupted run exactly."""
    problem = _problem(noise_std=0.3, every=2)
    full = _run(problem, start="noise", inflation=1.1)

    def kill(t, forecast, analysis):
        if t == kill_at:
            raise KeyboardInterrupt

    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        _run(problem, start="noise", inflation=1.1, out=out, cycles_per_block=block, callback=kill)
    partial = xr.open_zarr(out, consolidated=False)
    assert np.isnan(partial.x_analysis.isel(time=-1)).all()  # the kill left work to do
    seen = []
    resumed = _run(problem, start="noise", inflation=1.1, out=out, mode="resume", cycles_per_block=block,
                   callback=lambda t, f, a: seen.append(t))
    assert seen[0] == kill_at // block * block and seen[-1] == T - 1  # continued at the first unwritten block
    for name in ("x_analysis", "x_forecast_mean", "x_forecast_spread", "x_truth", "observations"):
        np.testing.assert_array_equal(resumed[name].values, full[name].values, err_msg=name)
    assert resumed.x_analysis.dims == ("time", "member", "k") and resumed.attrs["seed"] == 7
    assert resumed.x_analysis.attrs["units"] == "1" and resumed.time.attrs["units"] == "model time units"


@pytest.mark.parametrize("change, named", [({"seed": 8}, "seed"), ({"inflation": 1.2}, "analysis_inflation"),
                                          ({"n_members": N + 1}, "n_members"),
                                          ({"inflation": None}, "analysis_inflation: stored 1.1, now none")])
def test_resume_with_other_settings_is_refused_naming_the_setting(tmp_path, change, named):
    """Another value, or an option left out (it would fall back to its default), is refused."""
    problem, out = _problem(), tmp_path / "run.zarr"

    def kill(t, forecast, analysis):
        if t == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(problem, out=out, cycles_per_block=1, callback=kill, inflation=1.1)
    with pytest.raises(ValueError, match=f"cannot resume .*{named}"):
        kw = {k: v for k, v in {"inflation": 1.1, **change}.items() if v is not None}
        _run(problem, out=out, mode="resume", cycles_per_block=1, **kw)
    with pytest.raises(FileExistsError):
        _run(problem, out=out, inflation=1.1)


@pytest.mark.parametrize("case, match", [
    ("decreasing", r"observation time 0\.2 \(index 2\) does not come after 0\.3"),
    ("off_dt", r"observation time 0\.33 \(index 2\) is not a multiple of the model step dt=0\.05"),
    ("grid", "observations have shape .* maps the state"),
    ("noise", "noise_std must be finite and non-negative"),
    ("coords", "observations' 'k' coordinate differs from the model's 'k' grid"),
    ("variable", "lacks model variable 'x'"),
    ("no_time", "observations need a 'time' dim"),
])
def test_bad_inputs_raise_naming_them_before_any_cycle(case, match):
    model, op, initial, obs, truth = _problem()
    std, calls = 0.5, []
    if case == "decreasing":
        obs = obs.assign_coords(time=[0.1, 0.3, 0.2, 0.4, 0.5, 0.6])
    elif case == "off_dt":
        obs = obs.assign_coords(time=[0.1, 0.2, 0.33, 0.4, 0.5, 0.6])
    elif case == "grid":
        obs = obs.isel(location=slice(0, 5))
    elif case == "noise":
        std = -0.1
    elif case == "coords":
        obs = obs.rename(location="k").assign_coords(k=np.arange(K) + 1)
    elif case == "variable":
        initial = initial.rename(x="u")
    elif case == "no_time":
        obs = obs.isel(time=0)
    with pytest.raises(ValueError, match=match):
        assimilate(model, initial, obs, operator=op, noise_std=std, n_members=N, perturbation=1.0, progress=False,
                   callback=lambda *a: calls.append(1), **FAST)
    assert not calls


def test_the_xarray_path_gives_the_analysis_of_cycle_called_directly():
    """Same initial members, observations and (deterministic) model: assimilate's analysis ensemble equals
    cycle's on tensors, every variable observed."""
    model, op, initial, obs, truth = _problem()
    ds = _run(_problem())
    x0 = torch.as_tensor(initial.x.values)[None]
    members = torch.cat([model.perturb(x0, run_module.member_generator(7, run_module._INIT_KEY, m), 1.0)
                         for m in range(N)])
    res = cycle(lambda x: model.step(x, 2), members, op, torch.as_tensor(obs.values), noise_std=0.5, **FAST)
    np.testing.assert_array_equal(ds.x_analysis.values, res.analysis.numpy())
    np.testing.assert_array_equal(ds.x_forecast_mean.values, res.forecast.mean(1).numpy())
    assert float(cycle_scores(ds.x_analysis, ds.x_truth).rmse.mean()) < 0.5  # the filter tracks the truth (obs std 0.5)


def test_an_initial_ensemble_with_a_member_dim_is_used_as_given():
    model, op, initial, obs, truth = _problem()
    members = initial.expand_dims(member=3).copy(deep=True)
    members["x"] = members.x + xr.DataArray(np.random.default_rng(0).normal(size=(3, K)), dims=("member", "k"))
    ds = assimilate(model, members, obs, operator=op, noise_std=0.5, progress=False, **FAST)
    assert ds.sizes["member"] == 3
    np.testing.assert_array_equal(ds.x_forecast_mean.isel(time=0).values,
                                  model.step(torch.as_tensor(members.x.values), 2).mean(0).numpy())


def test_cycle_scores_against_a_hand_computed_case():
    """Two members (1, 3) and (2, 2) at two points, truth (0, 2.25): mean (1.5, 2.5), errors (1.5, 0.25),
    RMSE sqrt((2.25 + 0.0625) / 2); variances (ddof=1) 0.5 and 0.5, spread sqrt(0.5); CRPS per point
    mean|x - y| - |x1 - x2| / 4: (1.5 - 0.25, 0.5 - 0.25), mean 0.75; spread-skill
    sqrt(3/2 * 0.5) / RMSE; ranks of the truth: 0 (below both) and 1 (between)."""
    analysis = xr.DataArray([[[1.0, 3.0], [2.0, 2.0]]], dims=("time", "member", "k"), coords={"time": [0.5]})
    truth = xr.DataArray([[0.0, 2.25]], dims=("time", "k"), coords={"time": [0.5]})
    s = cycle_scores(analysis, truth)
    rmse = np.sqrt((1.5**2 + 0.25**2) / 2)
    np.testing.assert_allclose(s.rmse.values, [rmse])
    np.testing.assert_allclose(s.spread.values, [np.sqrt(0.5)])
    np.testing.assert_allclose(s.crps.values, [0.75])
    np.testing.assert_allclose(s.spread_skill.values, [np.sqrt(0.75) / rmse])
    assert s.rank_histogram.values.tolist() == [1.0, 1.0, 0.0]
    fig = plot_cycle_scores({"a": s, "b": s})
    assert len(fig.axes) == 2


def test_assimilate_with_domains_one_domain_is_the_global_run_and_other_domains_do_not_resume(tmp_path):
    """``assimilate(domains=)`` analyses by ``local_analysis``: one domain over the whole ring is the
    global run (to round-off); a store written with some domains does not resume with others, and
    an operator that is not the domains' pointwise observation is refused before any cycle."""
    from sciffusion.assimilate import periodic_domains

    problem = _problem(every=2)
    jj = torch.arange(0, K, 2)
    whole = _run(problem)
    local = _run(problem, domains=periodic_domains(K, jj, radius=K, block=K))
    np.testing.assert_allclose(local.x_analysis.values, whole.x_analysis.values, rtol=0, atol=1e-8)
    assert float(np.abs(whole.x_analysis.values - whole.x_forecast_mean.values[:, None]).max()) > 0.1
    out = tmp_path / "run.zarr"

    def kill(t, forecast, analysis):
        if t == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(problem, out=out, cycles_per_block=1, callback=kill, domains=periodic_domains(K, jj, radius=2, block=2))
    with pytest.raises(ValueError, match="cannot resume .*domains"):
        _run(problem, out=out, mode="resume", cycles_per_block=1, domains=periodic_domains(K, jj, radius=3, block=2))
    with pytest.raises(ValueError, match="pointwise observation"):
        _run(problem, domains=periodic_domains(K, jj + 1, radius=2, block=2))


def test_lagged_assimilate_equals_lagged_cycle_and_resumes_bit_for_bit(tmp_path):
    """assimilate(..., lag=2) gives cycle(..., lag=2)'s analysis on tensors (deterministic model, transported
    members and the ODE sampler: no random draw), and a run killed at cycle 3 resumes, reading the two last
    analyses back, to the uninterrupted result bit for bit; a resume without the lag is refused naming it."""
    problem = _problem(every=2)
    model, op, initial, obs, truth = problem
    full = _run(problem, lag=2, inflation=1.05)
    x0 = torch.as_tensor(initial.x.values)[None]
    members = torch.cat([model.perturb(x0, run_module.member_generator(7, run_module._INIT_KEY, m), 1.0)
                         for m in range(N)])
    res = cycle(lambda x: model.step(x, 2), members, op, torch.as_tensor(obs.values), noise_std=0.5, lag=2,
                inflation=1.05, **FAST)
    np.testing.assert_array_equal(full.x_analysis.values, res.analysis.numpy())
    np.testing.assert_array_equal(full.x_forecast_mean.values, res.forecast.mean(1).numpy())
    lag1 = _run(problem, inflation=1.05)
    assert not np.array_equal(lag1.x_analysis.values[1:], full.x_analysis.values[1:])  # the lag changes the analysis

    def kill(t, forecast, analysis):
        if t == 3:
            raise KeyboardInterrupt

    out = tmp_path / "lag.zarr"
    with pytest.raises(KeyboardInterrupt):
        _run(problem, lag=2, inflation=1.05, out=out, cycles_per_block=1, callback=kill)
    with pytest.raises(ValueError, match="analysis_lag"):
        _run(problem, inflation=1.05, out=out, mode="resume", cycles_per_block=1)
    resumed = _run(problem, lag=2, inflation=1.05, out=out, mode="resume", cycles_per_block=1)
    np.testing.assert_array_equal(resumed.x_analysis.values, full.x_analysis.values)
    np.testing.assert_array_equal(resumed.x_forecast_mean.values, full.x_forecast_mean.values)


def test_lag_with_a_stochastic_model_is_refused_before_any_cycle():
    calls = []
    with pytest.raises(ValueError, match="must be deterministic"):
        _run(_problem(noise_std=0.3), lag=2, callback=lambda *a: calls.append(1))
    assert not calls


def test_mda_assimilate_equals_mda_cycle_and_resumes_from_the_stored_chain_bit_for_bit(tmp_path):
    """assimilate(..., lag=3, mda=True) gives cycle(..., lag=3, mda=True)'s analysis on tensors (the ODE
    sampler draws nothing, so the chain's own generator does not matter), and differs from lag=3 alone; a
    run killed at cycle 4 (the chain at time 1, not the analysis of 3) resumes from the stored
    ``x_mda_chain`` to the uninterrupted result bit for bit; a resume without mda is refused naming it."""
    problem = _problem(every=2)
    model, op, initial, obs, truth = problem
    kw = {"lag": 3, "mda": True, "inflation": 1.05, "mda_inflation": 1.02}
    full = _run(problem, **kw)
    x0 = torch.as_tensor(initial.x.values)[None]
    members = torch.cat([model.perturb(x0, run_module.member_generator(7, run_module._INIT_KEY, m), 1.0)
                         for m in range(N)])
    res = cycle(lambda x: model.step(x, 2), members, op, torch.as_tensor(obs.values), noise_std=0.5, **kw, **FAST)
    np.testing.assert_array_equal(full.x_analysis.values, res.analysis.numpy())
    np.testing.assert_array_equal(full.x_forecast_mean.values, res.forecast.mean(1).numpy())
    plain = _run(problem, lag=3, inflation=1.05)
    assert not np.array_equal(plain.x_analysis.values[3:], full.x_analysis.values[3:])  # mda changes the analysis
    np.testing.assert_array_equal(full.x_mda_chain.values[0], members.numpy())  # waits at the initial time ...
    assert not np.array_equal(full.x_mda_chain.values[2], members.numpy())  # ... until the window is 3 long

    def kill(t, forecast, analysis):
        if t == 4:
            raise KeyboardInterrupt

    out = tmp_path / "mda.zarr"
    with pytest.raises(KeyboardInterrupt):
        _run(problem, **kw, out=out, cycles_per_block=1, callback=kill)
    with pytest.raises(ValueError, match="analysis_mda"):
        _run(problem, lag=3, inflation=1.05, out=out, mode="resume", cycles_per_block=1)
    resumed = _run(problem, **kw, out=out, mode="resume", cycles_per_block=1)
    for name in ("x_analysis", "x_forecast_mean", "x_mda_chain"):
        np.testing.assert_array_equal(resumed[name].values, full[name].values, err_msg=name)


@pytest.mark.parametrize("kw, match", [({"lag": 1, "mda": True}, "needs lag >= 2"),
                                       ({"lag": 2, "mda_inflation": 1.1}, "mda is off"),
                                       ({"lag": 2, "mda": "yes"}, "mda must be True or False")])
def test_bad_mda_settings_are_refused_by_assimilate_before_any_cycle(kw, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        _run(_problem(), callback=lambda *a: calls.append(1), **kw)
    assert not calls
