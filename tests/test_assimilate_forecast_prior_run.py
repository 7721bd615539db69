"""The trained prior ``x | forecast`` through ``assimilate`` (xarray, zarr, resume) and ``sciffusion assimilate``:
the xarray run's analysis is ``cycle``'s with the same per-cycle generators, a resume with another prior (or
none) is refused while the same prior from its saved path resumes bit for bit, bad combinations are refused
before any cycle, and the command line loads ``[filter] prior`` and tracks the truth."""

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.assimilate import assimilate, cycle, train_forecast_prior, truth_and_observations
from sciffusion.assimilate import run as run_module
from sciffusion.cli import main
from sciffusion.diffusion import member_generators
from sciffusion.inverse import Mask
from sciffusion.systems.lorenz96 import Lorenz96

torch.set_num_threads(1)

K, N, T, SEED = 12, 6, 6, 7
FAST = {"steps": 6, "cg_iters": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny prior of tests/test_assimilate_forecast_prior.py (12 variables, forecasts 0.15 ahead), saved,
    and a twin experiment observing every variable every 0.15 with std 0.5."""
    model = Lorenz96(k=K)
    prior = train_forecast_prior(model, perturbation=0.3, interval=0.15, n_trajectories=8, length=200, draws=2,
                                 steps=400, net={"kwargs": {"width": 24, "n_blocks": 2}}, batch_size=64, lr=3e-3,
                                 warmup_steps=20, ema_decay=0.99, progress=False, seed=0)
    path = prior.save(tmp_path_factory.mktemp("prior") / "l96_prior")
    op = Mask(torch.ones(K, dtype=torch.bool))
    initial, obs, truth = truth_and_observations(model, op, n_cycles=T, interval=0.15, noise_std=0.5, spinup=5.0, seed=3)
    return model, prior, path, op, initial, obs, truth


def _run(setup, **kw):
    model, prior, path, op, initial, obs, truth = setup
    options = {"n_members": N, "perturbation": 0.3, "seed": SEED, "truth": truth, "progress": False, "prior": prior,
               **FAST, **kw}
    return assimilate(model, initial, obs, operator=op, noise_std=0.5, **options)


def test_assimilate_with_a_prior_gives_cycle_s_analysis_with_the_same_per_cycle_generators(setup):
    """assimilate draws the analysis of cycle t with member_generators(seed, 1, key=(_ANALYSIS_KEY, t)): one
    cycle() call per time with that generator, from the same initial members and deterministic model,
    gives the same analysis ensembles bit for bit, and the analysis tracks the truth (RMSE < obs std 0.5);
    the prior's conditional denoiser passed as a plain denoiser gives the same analysis."""
    model, prior, path, op, initial, obs, truth = setup
    ds = _run(setup)
    x0 = torch.as_tensor(initial.x.values)[None]
    x = torch.cat([model.perturb(x0, run_module.member_generator(SEED, run_module._INIT_KEY, m), 0.3)
                   for m in range(N)])
    x0_members, y = x, torch.as_tensor(obs.values)
    analyses = []
    for t in range(T):
        g = member_generators(SEED, 1, key=(run_module._ANALYSIS_KEY, t))[0]
        x = cycle(lambda e: model.step(e, 3), x, op, y[t:t + 1], noise_std=0.5, prior=prior, generator=g,
                  **FAST).analysis[0]
        analyses.append(x)
    np.testing.assert_array_equal(ds.x_analysis.values, torch.stack(analyses).numpy())
    rmse = float(np.sqrt(((ds.x_analysis.mean("member") - ds.x_truth) ** 2).mean("k")).mean())
    assert rmse < 0.5, rmse
    assert ds.attrs["prior"].startswith("ForecastPrior sha256:") and "prior_path" not in ds.attrs
    # any conditional denoiser: the prior's own gives the same analysis, recorded by its output's hash
    den = _run(setup, prior=prior.conditional())
    np.testing.assert_array_equal(den.x_analysis.values, ds.x_analysis.values)
    assert den.attrs["prior"].startswith("ForecastDenoiser sha256:")
    # the match is not vacuous: another generator for the first cycle draws another analysis
    other = cycle(lambda e: model.step(e, 3), x0_members, op, y[:1], noise_std=0.5, prior=prior,
                  generator=torch.Generator().manual_seed(SEED), **FAST)
    assert (other.analysis[0] - analyses[0]).abs().max() > 1e-3


def test_a_resume_with_another_prior_or_none_is_refused_and_the_same_prior_resumes_bit_for_bit(setup, tmp_path):
    """Run from the saved path and killed at cycle 3 (blocks of 1): resuming with a prior whose error scale
    differs, or with no prior, is refused naming ``prior``; the same prior in memory resumes (the record is a
    hash of the weights, not the path), and the store equals the uninterrupted in-memory run bit for bit and
    keeps the path it was written with."""
    model, prior, path, op, initial, obs, truth = setup
    out = tmp_path / "run.zarr"

    def kill(t, forecast, analysis):
        if t == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(setup, out=out, cycles_per_block=1, callback=kill, prior=str(path))
    other = dataclasses.replace(prior, scale=prior.scale * 1.01)
    with pytest.raises(ValueError, match="cannot resume .*prior: stored 'ForecastPrior sha256:"):
        _run(setup, out=out, mode="resume", cycles_per_block=1, prior=other)
    with pytest.raises(ValueError, match="cannot resume .*prior: stored .*now none"):
        _run(setup, out=out, mode="resume", cycles_per_block=1, prior=None)
    seen = []
    resumed = _run(setup, out=out, mode="resume", cycles_per_block=1, callback=lambda t, *a: seen.append(t))
    assert seen == [3, 4, 5]
    full = _run(setup)
    np.testing.assert_array_equal(resumed.x_analysis.values, full.x_analysis.values)
    np.testing.assert_array_equal(resumed.x_forecast_mean.values, full.x_forecast_mean.values)
    assert resumed.attrs["prior"] == full.attrs["prior"] and resumed.attrs["prior_path"] == str(path)


def test_a_prior_with_domains_a_wrong_state_shape_or_ensemble_prior_options_is_refused_before_any_cycle(setup):
    from sciffusion.assimilate import periodic_domains

    model, prior, path, op, initial, obs, truth = setup
    calls = []
    small = dataclasses.replace(prior, state_shape=(10,))
    cases = [(TypeError, "takes no domains", {"domains": periodic_domains(K, torch.arange(K), radius=2)}),
             (ValueError, r"state shape \(12,\) but the forecast prior \(cond\) expects \(10,\)", {"prior": small}),
             (TypeError, r"\['bandwidth', 'inflation'\] belong to the ensemble prior",
              {"bandwidth": 0.9, "inflation": 1.1}),
             (FileNotFoundError, "missing/prior", {"prior": "missing/prior"}),
             (ValueError, r"trained on forecasts over interval 0\.15 .* index 0 comes 0\.3 after",
              {"prior": dataclasses.replace(prior, interval=0.15), "observations": "every other time"})]
    for error, match, kw in cases:
        run = setup
        if kw.pop("observations", None):  # the same system observed at twice the prior's interval
            run = (*setup[:5], obs.isel(time=slice(1, None, 2)), truth.isel(time=slice(1, None, 2)))
        with pytest.raises(error, match=match):
            _run(run, callback=lambda *a: calls.append(1), **kw)
    assert not calls


def _config(tmp_path, prior: str, **filt) -> str:
    text = f"""seed = 0

[system]
name = "lorenz96"
k = {K}

[truth]
spinup = 5.0
seed = 1

[observations]
operator = "all"
noise_std = 0.5
interval = 0.15
cycles = 10

[filter]
members = 8
perturbation = 0.3
steps = 8
cg_iters = 2
cycles_per_block = 5
prior = "{prior}"
""" + "".join(f"{k} = {v}\n" for k, v in filt.items())
    path = tmp_path / "fp.toml"
    path.write_text(text)
    return str(path)


def test_the_command_line_loads_filter_prior_and_names_a_missing_one(setup, tmp_path, capsys):
    """``prior = "missing/path"`` exits 2 naming the key and the path, an ensemble-prior key with it is refused;
    the saved prior runs 10 cycles to a store whose analysis RMSE (cycles 3-10) is below the noise 0.5."""
    model, prior, path, *_ = setup
    out = tmp_path / "da.zarr"
    assert main(["assimilate", _config(tmp_path, "missing/path"), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config [filter] prior = 'missing/path' cannot be loaded" in err and "does not exist" in err, err
    assert main(["assimilate", _config(tmp_path, str(path), inflation=1.1), "-o", str(out), "--no-progress"]) == 2
    assert "['inflation']" in capsys.readouterr().err and not out.exists()
    assert main(["assimilate", _config(tmp_path, str(path)), "-o", str(out), "--no-progress"]) == 0
    ds = xr.open_zarr(out)
    rmse = np.sqrt(((ds.x_analysis.mean("member") - ds.x_truth) ** 2).mean("k")).values
    assert dict(ds.x_analysis.sizes) == {"time": 10, "member": 8, "k": K} and ds.attrs["prior_path"] == str(path)
    assert rmse[2:].mean() < 0.5, rmse
