"""``sciffusion assimilate CONFIG``: the sample config of docs/assimilation.md at tiny size writes a store
with the expected dims, resumes, refuses clobbering and names unknown config keys."""

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "assimilation.md"


def _toml(cfg: dict) -> str:
    """A TOML text of a dict of top-level scalars and tables of scalars."""
    def value(v):
        return str(v).lower() if isinstance(v, bool) else repr(v).replace("'", '"')

    top = [f"{k} = {value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
              for k, v in cfg.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def tiny_config(tmp_path, **changes) -> Path:
    """The docs' sample config with 8 variables, 6 members, 4 cycles, 4 sampler steps."""
    cfg = tomllib.loads(re.search(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S).group(1))
    cfg["system"]["k"] = 8
    cfg["truth"]["spinup"] = 1.0
    cfg["observations"]["cycles"] = 4
    cfg["filter"].update(members=6, steps=4, cg_iters=2, localization_radius=2.0, cycles_per_block=2)
    for key, value in changes.items():
        table, _, name = key.rpartition("__")
        (cfg[table] if table else cfg)[name] = value
    path = tmp_path / "tiny.toml"
    path.write_text(_toml(cfg))
    return path


def test_the_docs_config_at_tiny_size_writes_a_store_and_resumes(tmp_path, capsys):
    out = tmp_path / "da.zarr"
    argv = ["assimilate", str(tiny_config(tmp_path)), "-o", str(out), "--no-progress", "--figure", str(tmp_path / "s.png")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "x analysis after 0 burn-in cycles: rmse" in text and (tmp_path / "s.png").exists()
    ds = xr.open_zarr(out)
    assert ds.x_analysis.dims == ("time", "member", "k") and dict(ds.x_analysis.sizes) == {"time": 4, "member": 6, "k": 8}
    assert ds.x_truth.dims == ("time", "k") and ds.observations.dims == ("time", "location")
    assert ds.sizes["location"] == 4  # every second variable
    assert "sciffusion_completed_blocks" not in ds.attrs and np.isfinite(ds.x_analysis).all()
    first = ds.x_analysis.values
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0  # complete: nothing to redo, same values
    np.testing.assert_array_equal(xr.open_zarr(out).x_analysis.values, first)
    assert main(["assimilate", str(tiny_config(tmp_path, seed=5)), "-o", str(out), "--no-progress", "--resume"]) == 2
    assert "seed: stored 0, now 5" in capsys.readouterr().err


@pytest.mark.parametrize("change, needle", [
    ({"filter__member": 4}, "config [filter] has unknown key(s) ['member']; valid keys: ['bandwidth'"),
    ({"observations__operator": "every_other"}, "operator must be one of ['all', 'every', 'fraction']"),
    ({"observations__fraction": 0.5}, "fraction applies to operator = 'fraction' only"),
    ({"system__name": "burgers"}, "name must be one of ['lorenz96', 'kolmogorov']"),
    ({"observations__noise_std": -1.0}, "noise_std must be finite and non-negative"),
    ({"observations__interval": 0.07}, "interval=0.07 must be a non-negative multiple of the model step dt=0.05"),
    ({"filter__localization_metric": "euclid"}, "metric must be one of ('arc', 'chord')"),
    ({"filter__lag": 0}, "config [filter] lag must be an integer >= 1, got 0"),
    ({"filter__lag": 2, "filter__prior": "runs/none"}, "lag = 2 runs the global analysis over a window: it does not go "
                                                       "with [filter] prior"),
    ({"filter__mda": True}, "config [filter] mda = true assimilates each observation over the lag windows that hold "
                            "it: it needs lag >= 2, got lag = 1"),
    ({"filter__lag": 2, "filter__mda": 1}, "config [filter] mda must be true or false, got 1"),
    ({"filter__lag": 2, "filter__mda_inflation": 1.1}, "mda_inflation is the inflation of the mda chain: it needs mda"),
])
def test_bad_configs_are_refused_naming_the_key(tmp_path, capsys, change, needle):
    assert main(["assimilate", str(tiny_config(tmp_path, **change)), "-o", str(tmp_path / "o.zarr"), "--no-progress"]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_a_killed_cli_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """The analysis dies at the third cycle (blocks of 2 cycles: the first block is written); --resume
    continues at cycle 2 and the store equals that of an uninterrupted run bit for bit."""
    from sciffusion.assimilate import run as run_module

    config, whole, killed = tiny_config(tmp_path), tmp_path / "whole.zarr", tmp_path / "killed.zarr"
    assert main(["assimilate", str(config), "-o", str(whole), "--no-progress"]) == 0
    real, calls = run_module.analyse, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "analyse", dying)
    with pytest.raises(RuntimeError, match="killed"):
        main(["assimilate", str(config), "-o", str(killed), "--no-progress"])
    monkeypatch.setattr(run_module, "analyse", real)
    assert np.isnan(xr.open_zarr(killed, consolidated=False).x_analysis.isel(time=2)).all()
    assert main(["assimilate", str(config), "-o", str(killed), "--no-progress", "--resume"]) == 0
    for name in ("x_analysis", "x_forecast_mean", "x_truth", "observations"):
        np.testing.assert_array_equal(xr.open_zarr(killed)[name].values, xr.open_zarr(whole)[name].values)


def test_a_domains_table_runs_the_local_analysis_and_one_domain_over_the_ring_is_the_global_run(tmp_path):
    """[domains] with a halo that covers the 8-variable ring is one domain holding the whole state, so
    the local analysis must give the global run's analysis (same draws, to float rounding); a
    smaller halo runs real local domains (a different, finite analysis)."""
    base = {"filter__localization_radius": None}
    whole, local, ring = tmp_path / "whole.zarr", tmp_path / "local.zarr", tmp_path / "ring.zarr"

    def config(name, **changes):
        path = tiny_config(tmp_path, **changes)
        text = path.read_text().replace("localization_radius = None\n", "")
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    assert main(["assimilate", config("g.toml", **base), "-o", str(whole), "--no-progress"]) == 0
    one = config("one.toml", **base)
    Path(one).write_text(Path(one).read_text() + "\n[domains]\nradius = 4\nblock = 8\n")
    assert main(["assimilate", one, "-o", str(ring), "--no-progress"]) == 0
    np.testing.assert_allclose(xr.open_zarr(ring).x_analysis.values, xr.open_zarr(whole).x_analysis.values,
                               rtol=1e-6, atol=1e-8)
    small = config("small.toml", **base)
    Path(small).write_text(Path(small).read_text() + "\n[domains]\nradius = 1\nobs_radius = 1.0\n")
    assert main(["assimilate", small, "-o", str(local), "--no-progress"]) == 0
    a = xr.open_zarr(local).x_analysis.values
    assert np.isfinite(a).all() and not np.allclose(a, xr.open_zarr(whole).x_analysis.values)


def test_domains_space_ensemble_reaches_the_analysis_and_is_recorded(tmp_path):
    """[domains] space = "ensemble" runs the ensemble-space local analysis: the same draws as
    ``assimilate(..., space="ensemble")`` called directly, different from the state-space run's, and a
    resume of that store with the state-space table is refused by the provenance check."""
    from sciffusion.assimilate import assimilate, periodic_domains, truth_and_observations
    from sciffusion.commands.assimilate import build_operator, build_system, observed_index

    path = tiny_config(tmp_path, filter__localization_radius=None)
    text = path.read_text().replace("localization_radius = None\n", "") + "\n[domains]\nradius = 2\nobs_radius = 1.0\n"
    state, ens = tmp_path / "state.toml", tmp_path / "ens.toml"
    state.write_text(text)
    ens.write_text(text + 'space = "ensemble"\n')
    assert main(["assimilate", str(state), "-o", str(tmp_path / "s.zarr"), "--no-progress"]) == 0
    assert main(["assimilate", str(ens), "-o", str(tmp_path / "e.zarr"), "--no-progress"]) == 0
    a = xr.open_zarr(tmp_path / "e.zarr").x_analysis.values
    assert np.isfinite(a).all() and not np.allclose(a, xr.open_zarr(tmp_path / "s.zarr").x_analysis.values)
    cfg = tomllib.loads(ens.read_text())
    model = build_system(cfg["system"])
    op = build_operator(cfg["observations"], (model.k,))
    o = cfg["observations"]
    initial, obs, truth = truth_and_observations(model, op, n_cycles=o["cycles"], interval=o["interval"],
                                                 noise_std=o["noise_std"], spinup=cfg["truth"].get("spinup", 10.0),
                                                 seed=cfg["truth"].get("seed", cfg.get("seed", 0)))
    filt = dict(cfg["filter"])
    n, pert, block = filt.pop("members"), filt.pop("perturbation"), filt.pop("cycles_per_block", 10)
    domains = periodic_domains(model.k, observed_index(op), radius=2, obs_radius=1.0)
    assert o["function"] == "arctan"
    ds = assimilate(model, initial, obs, operator=op, noise_std=o["noise_std"], n_members=n, perturbation=pert,
                    seed=cfg.get("seed", 0), truth=truth, cycles_per_block=block, progress=False, domains=domains,
                    function=torch.atan, space="ensemble", **filt)
    np.testing.assert_allclose(a, ds.x_analysis.values, rtol=1e-6, atol=1e-8)
    assert main(["assimilate", str(state), "-o", str(tmp_path / "e.zarr"), "--resume", "--no-progress"]) == 2


def test_exact_guidance_is_the_default_there_and_is_recorded(tmp_path, capsys):
    """[domains] space = "ensemble" with linear observations and no [filter] guidance runs the
    closed-form posterior (the default there) and records it: finite, at the observed entries 4x
    closer to the truth than the forecast (observation noise 0.05), and a resume with MMPS instead
    is refused by the provenance check."""
    path = tiny_config(tmp_path, filter__localization_radius=None, filter__cg_iters=None,
                       observations__function=None, observations__noise_std=0.05)
    text = path.read_text().replace("localization_radius = None\n", "").replace("cg_iters = None\n", "")
    text = text.replace("function = None\n", "")
    assert "guidance" not in text
    path.write_text(text + '\n[domains]\nradius = 2\nobs_radius = 1.0\nspace = "ensemble"\n')
    out = tmp_path / "x.zarr"
    assert main(["assimilate", str(path), "-o", str(out), "--no-progress"]) == 0
    ds = xr.open_zarr(out)
    assert ds.attrs["analysis_guidance"] == "exact" and np.isfinite(ds.x_analysis).all()
    err = lambda m: float(np.sqrt(((m - ds.x_truth)[:, ::2] ** 2).mean()))  # noqa: E731  the observed entries
    assert err(ds.x_analysis.mean("member")) < 0.5 * err(ds.x_forecast_mean)  # measured 0.04 against 0.17
    mmps = tmp_path / "mmps.toml"
    mmps.write_text(path.read_text().replace("[filter]\n", '[filter]\nguidance = "mmps"\n'))
    assert main(["assimilate", str(mmps), "-o", str(out), "--resume", "--no-progress"]) == 2
    assert "analysis_guidance: stored 'exact', now 'mmps'" in capsys.readouterr().err


@pytest.mark.parametrize("table, needle", [
    ("[domains]\nblock = 2\n", "config [domains] needs 'radius'"),
    ("[domains]\nradius = 2\nblock = 3\n", "config [domains]: block must be a positive integer dividing the grid size 8"),
    ("[domains]\nradius = 2\nhalo = 3\n", "config [domains] has unknown key(s) ['halo']"),
    ("[domains]\nradius = 2\nspace = \"weights\"\n", "config [domains] space must be 'state' or 'ensemble'"),
    ("[domains]\nradius = 2\nspace = \"ensemble\"\ntaper_radius = 2.0\n", "cannot apply taper_radius"),
    ("[domains]\nradius = 2\nspace = \"ensemble\"\n", "guidance = 'exact' is the closed-form posterior"),
])
def test_bad_domains_tables_are_refused_naming_the_key(tmp_path, capsys, table, needle):
    extra = {"filter__guidance": "exact"} if "exact" in needle else {}  # with the tiny config's arctan function
    path = tiny_config(tmp_path, filter__localization_radius=None, **extra)
    path.write_text(path.read_text().replace("localization_radius = None\n", "") + "\n" + table)
    assert main(["assimilate", str(path), "-o", str(tmp_path / "o.zarr"), "--no-progress"]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_domains_and_a_localization_radius_exclude_each_other(tmp_path, capsys):
    path = tiny_config(tmp_path)
    path.write_text(path.read_text() + "\n[domains]\nradius = 2\n")
    assert main(["assimilate", str(path), "-o", str(tmp_path / "o.zarr"), "--no-progress"]) == 2
    assert "localization_radius and [domains] exclude each other" in capsys.readouterr().err


def test_the_chord_metric_gives_a_valid_taper_where_the_arc_one_is_not_and_a_warning_says_so(tmp_path):
    """On a ring of 8 the arc-distance Gaspari-Cohn taper of radius 3 has a negative eigenvalue: the config
    warns, naming the radius and the remedy; with localization_metric = "chord" it runs without the warning
    and records the key."""
    import warnings

    import torch

    from sciffusion.assimilate import ring_taper

    assert float(torch.linalg.eigvalsh(ring_taper(8, 3.0)).min()) < 0 <= float(torch.linalg.eigvalsh(ring_taper(8, 3.0, metric="chord")).min()) + 1e-12
    with pytest.warns(UserWarning, match="localization_radius = 3.0.*not positive semi-definite.*chord"):
        assert main(["assimilate", str(tiny_config(tmp_path, filter__localization_radius=3.0)), "-o",
                     str(tmp_path / "a.zarr"), "--no-progress"]) == 0
    out = tmp_path / "c.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(["assimilate", str(tiny_config(tmp_path, filter__localization_radius=3.0,
                                                   filter__localization_metric="chord")), "-o", str(out),
                     "--no-progress"]) == 0
    # the store records the taper itself (its hash), so a resume with the other metric is refused
    assert xr.open_zarr(out).attrs["analysis_localization"] != xr.open_zarr(tmp_path / "a.zarr").attrs["analysis_localization"]


@pytest.mark.parametrize("mda", [{}, {"mda": True, "mda_inflation": 1.02}])
def test_filter_lag_reaches_assimilate_and_is_recorded(tmp_path, capsys, mda):
    """[filter] lag = 2 (and mda = true) runs the lagged analysis (its multiple data assimilation): the store
    equals assimilate(..., lag=2) called directly with the config's settings, records analysis_lag (and
    analysis_mda, with the chain stored), and differs from the run without it."""
    from sciffusion.assimilate import assimilate

    out, plain = tmp_path / "lag.zarr", tmp_path / "plain.zarr"
    config = tiny_config(tmp_path, filter__lag=2, **{f"filter__{k}": v for k, v in mda.items()})
    assert main(["assimilate", str(config), "-o", str(out), "--no-progress"]) == 0
    assert main(["assimilate", str(tiny_config(tmp_path)), "-o", str(plain), "--no-progress"]) == 0
    ds, ds_plain = xr.open_zarr(out), xr.open_zarr(plain)
    assert ds.attrs["analysis_lag"] == 2 and "analysis_lag" not in ds_plain.attrs
    assert ("x_mda_chain" in ds) == bool(mda) and ds.attrs.get("analysis_mda", False) == bool(mda)
    assert not np.array_equal(ds.x_analysis.values[1:], ds_plain.x_analysis.values[1:])
    from sciffusion.commands.assimilate import build_operator, build_system, localization
    cfg = tomllib.loads(tiny_config(tmp_path, filter__lag=2).read_text())
    model = build_system(cfg["system"])
    op = build_operator(cfg["observations"], (8,))
    from sciffusion.assimilate import truth_and_observations
    initial, obs, truth = truth_and_observations(model, op, n_cycles=4, interval=cfg["observations"]["interval"],
                                                 noise_std=cfg["observations"]["noise_std"], spinup=1.0,
                                                 seed=cfg["truth"]["seed"])
    f = cfg["filter"]
    direct = assimilate(model, initial, obs, operator=op, noise_std=cfg["observations"]["noise_std"], n_members=6,
                        perturbation=f["perturbation"], seed=cfg["seed"], progress=False, lag=2, steps=4, cg_iters=2, **mda,
                        inflation=f["inflation"], localization=localization(model, 2.0, "arc"))
    np.testing.assert_array_equal(ds.x_analysis.values, direct.x_analysis.values)
