"""The command line refuses bad arguments before writing anything, never writes over its inputs,
speaks in options (``--overwrite``, not ``mode='w'``), and keeps tracebacks for bugs."""

import json
import os

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.cli import main
from sciffusion.data import write_zarr
from sciffusion.demo import demo_dataset
from _tiny import tiny_config, train_tiny

def _config(tmp_path, data, **training):
    return tiny_config(data, tmp_path / "run", **{"steps": 2, "batch_size": 8, "checkpoint_every": 2, **training})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A periodic U-Net trained 2 steps on 8x8 fields (20 times: 19 condition/target pairs)."""
    return train_tiny(tmp_path_factory.mktemp("trained"), n_time=20, steps=2, batch_size=8)


def _sample(trained, out, *extra):
    return main(["sample", str(trained / "run"), str(trained / "data.zarr"), "-o", str(out), "--members", "2",
                 "--cases", "0", "--steps", "2", "--no-progress", *extra])


def _snapshot(path):
    """Every file under ``path`` with its bytes: equal snapshots mean nothing was touched."""
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


# ---------------------------------------------------------------- 5. output == input is refused
@pytest.mark.parametrize("where", ["same", "symlink", "inside", "parent", "checkpoint"])
def test_sample_refuses_an_output_that_is_inside_or_holds_its_input_and_the_input_survives(trained, tmp_path,
                                                                                          where, capsys):
    """`sample -o DATA --overwrite` used to delete DATA before reading it; now every overlap of the
    output with DATA or CHECKPOINT (equal, via a symlink, inside, holding it) is refused, naming both."""
    data = trained / "data.zarr"
    before = _snapshot(data)
    if where == "symlink":
        (tmp_path / "link.zarr").symlink_to(data)
    out = {"same": data, "symlink": tmp_path / "link.zarr", "inside": data / "ens.zarr", "parent": trained,
           "checkpoint": trained / "run"}[where]
    assert _sample(trained, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "-o" in err and ("DATA" in err or "CHECKPOINT" in err) and "another output path" in err
    assert _snapshot(data) == before and (trained / "run" / "latest").exists()


@pytest.mark.parametrize("argv", [
    ["rollout", "ckpt", "{in}", "-o", "{in}", "--n-steps", "2", "--overwrite"],
    ["rollout", "ckpt", "init.zarr", "--forcings", "{in}", "-o", "{in}", "--n-steps", "2", "--overwrite"],
    ["downscale", "ckpt", "{in}", "-o", "{in}", "--overwrite"],
    ["downscale", "{in}", "--train", "{in}", "--factor", "2"],
    ["demo", "--out", "{in}", "--checkpoint", "{in}/step", "--overwrite"],
    ["score", "{in}", "{in}", "--out", "{in}"],
], ids=["rollout", "rollout-forcings", "downscale", "downscale-train", "demo", "score"])
def test_every_writing_command_refuses_to_write_over_its_input(tmp_path, argv, capsys):
    """The check runs before any checkpoint or data is opened, so it holds for every command."""
    data = tmp_path / "in.zarr"
    write_zarr(demo_dataset(n_time=3, size=4, seed=0), data)
    before = _snapshot(data)
    assert main([a.replace("{in}", str(data)) for a in argv]) == 2
    assert "writing there would destroy it" in capsys.readouterr().err
    assert _snapshot(data) == before


def test_training_refuses_an_out_dir_that_is_its_data(trained, tmp_path, capsys):
    cfg = _config(tmp_path, trained / "data.zarr", out_dir=str(trained / "data.zarr"))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    before = _snapshot(trained / "data.zarr")
    assert main(["train", str(tmp_path / "cfg.json"), "--no-progress"]) == 2
    assert "[training] out_dir" in capsys.readouterr().err
    assert _snapshot(trained / "data.zarr") == before


# ---------------------------------------------------------------- 7. argument checks, before writing
@pytest.mark.parametrize("extra,option", [
    (["--members", "0"], "--members"), (["--members", "-3"], "--members"), (["--steps", "-5"], "--steps"),
    (["--batch-size", "-1"], "--batch-size"), (["--member-chunk", "0"], "--member-chunk"),
    (["--seed", "-1"], "--seed"),
])
def test_sample_refuses_non_positive_sizes_before_writing(trained, tmp_path, extra, option, capsys):
    """`--members 0` used to write an empty store, `--steps -5` (or `--seed -1`) a store that blocked
    the corrected rerun."""
    out = tmp_path / "ens.zarr"
    assert _sample(trained, out, *extra) == 2
    assert f"{option} must be >= {0 if option == '--seed' else 1}" in capsys.readouterr().err
    assert not out.exists()


def test_sample_refuses_cases_out_of_range_naming_how_many_there_are(trained, tmp_path, capsys):
    out = tmp_path / "ens.zarr"
    assert main(["sample", str(trained / "run"), str(trained / "data.zarr"), "-o", str(out), "--cases", "100000",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cases [100000] out of range" in err and "19 condition/target pairs" in err
    assert not out.exists()


@pytest.mark.parametrize("argv,option", [
    (["rollout", "ckpt", "init.zarr", "-o", "{out}", "--n-steps", "-5"], "--n-steps"),
    (["rollout", "ckpt", "init.zarr", "-o", "{out}", "--n-steps", "3", "--sampler-steps", "0"], "--sampler-steps"),
    (["rollout", "ckpt", "init.zarr", "-o", "{out}", "--n-steps", "3", "--chunk-steps", "0"], "--chunk-steps"),
    (["rollout", "ckpt", "init.zarr", "-o", "{out}", "--n-steps", "3", "--members", "0"], "--members"),
    (["downscale", "ckpt", "coarse.zarr", "-o", "{out}", "--steps", "-5"], "--steps"),
    (["downscale", "ckpt", "coarse.zarr", "-o", "{out}", "--batch-size", "0"], "--batch-size"),
    (["downscale", "{out}", "--train", "fine.zarr", "--factor", "2", "--train-steps", "0"], "--train-steps"),
    (["demo", "--out", "{out}", "--members", "0"], "--members"),
])
def test_rollout_downscale_and_demo_refuse_non_positive_sizes_before_writing(tmp_path, argv, option, capsys):
    out = tmp_path / "out"
    assert main([a.replace("{out}", str(out)) for a in argv]) == 2
    assert f"{option} must be >= 1" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("table,key", [("training", "stepz"), ("data", "varaibles"), ("model", "kwarg")])
def test_a_typo_in_a_training_config_key_is_refused_naming_the_key_table_and_valid_keys(trained, tmp_path,
                                                                                         table, key, capsys):
    """`stepz = 10` in [training] used to be passed on or ignored; now it names the key and the valid ones."""
    cfg = _config(tmp_path, trained / "data.zarr")
    cfg[table][key] = 10
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "cfg.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"config [{table}] has unknown key(s) ['{key}']" in err and "valid keys" in err
    valid = {"training": ["'steps'", "'batch_size'", "'lr'", "'out_dir'"], "data": ["'variables'", "'path'"],
             "model": ["'kwargs'", "'net'"]}[table]
    assert all(v in err for v in valid)
    assert not (tmp_path / "run").exists()


def test_a_periodic_model_refuses_fields_on_another_grid_naming_both_shapes(trained, tmp_path, capsys):
    """A 4x4 crop sampled by a U-Net trained on 8x8 doubly periodic fields is another physical system."""
    step = (trained / "run" / "latest").read_text()
    config = json.loads((trained / "run" / step / "config.json").read_text())
    assert config["data"]["grid_shape"] == [8, 8]
    write_zarr(demo_dataset(n_time=5, size=4, seed=2), tmp_path / "small.zarr")
    out = tmp_path / "ens.zarr"
    assert main(["sample", str(trained / "run"), str(tmp_path / "small.zarr"), "-o", str(out), "--members", "2",
                 "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "(4, 4) grid" in err and "trained on (8, 8)" in err and "periodic" in err
    assert not out.exists()


# ---------------------------------------------------------------- 11b. sampler methods and their options
def test_the_cli_offers_every_sampler_the_library_has():
    from sciffusion.commands._common import SAMPLER_METHODS
    from sciffusion.diffusion import METHODS

    assert sorted(SAMPLER_METHODS) == sorted(METHODS)


def test_sample_with_dpmpp2m_records_it_in_the_provenance(trained, tmp_path):
    out = tmp_path / "ens.zarr"
    assert _sample(trained, out, "--method", "dpmpp2m") == 0
    assert json.loads(xr.open_zarr(out).attrs["sampler"]) == {"method": "dpmpp2m", "steps": 2}


@pytest.mark.parametrize("extra,needle", [
    (["--churn", "10"], "--churn applies to --method stochastic only, not the default sampler"),
    (["--method", "stochastic", "--eta", "0.5"], "--eta applies to --method ddim only, not --method stochastic"),
    (["--method", "ddim", "--eta", "-1"], "--eta must be >= 0"),
])
def test_sampler_options_the_method_does_not_use_are_refused(trained, tmp_path, extra, needle, capsys):
    """`--churn` with heun used to be silently ignored."""
    out = tmp_path / "ens.zarr"
    assert _sample(trained, out, *extra) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- 10. wording and tracebacks
@pytest.fixture(scope="module")
def rollout_run(tmp_path_factory):
    from sciffusion.emulators import Rollout

    tmp_path = tmp_path_factory.mktemp("rollout")
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"x": (("time", "site"), rng.normal(size=(40, 8)))},
                    coords={"time": np.arange(40.0), "site": np.arange(8)})
    net = {"name": "PeriodicConv1d", "kwargs": {"width": 8, "n_blocks": 1}}
    Rollout.fit(ds, net=net, steps=2, batch_size=16).save(tmp_path / "ckpt")
    write_zarr(ds, tmp_path / "data.zarr")
    write_zarr(ds.rename(x="x_truth"), tmp_path / "renamed.zarr")
    return tmp_path


def test_rollout_with_a_missing_variable_names_it_the_file_and_what_the_file_has(rollout_run, capsys):
    """Used to print just `error: 'x'` (a bare KeyError)."""
    renamed = rollout_run / "renamed.zarr"
    assert main(["rollout", str(rollout_run / "ckpt"), str(renamed), "-o", str(rollout_run / "o.zarr"),
                 "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"INITIAL {renamed} lacks the variable(s) ['x']" in err and "it has ['x_truth']" in err


def test_rollout_select_out_of_range_names_the_dimension_and_its_size(rollout_run, capsys):
    """Used to end in a bare IndexError from isel."""
    data = rollout_run / "data.zarr"
    assert main(["rollout", str(rollout_run / "ckpt"), str(data), "-o", str(rollout_run / "s.zarr"), "--n-steps", "2",
                 "--select", "time=40", "--no-progress"]) == 2
    assert f"--select 'time=40': time has 40 positions in {data}" in capsys.readouterr().err
    assert not (rollout_run / "s.zarr").exists()


@pytest.mark.filterwarnings("ignore:the rollout of")  # 2 training steps: the rollout is not skilful
def test_an_existing_output_is_refused_in_command_line_words(rollout_run, capsys):
    argv = ["rollout", str(rollout_run / "ckpt"), str(rollout_run / "data.zarr"), "-o", str(rollout_run / "r.zarr"),
            "--steps", "2", "--sampler-steps", "2", "--no-progress"]
    assert main(argv) == 0
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


def _raising(monkeypatch, exc):
    def run(args):
        raise exc

    monkeypatch.setattr("sciffusion.commands.simulate.run", run)
    return ["simulate", "lorenz96", "-o", "unused.zarr"]


def test_input_errors_print_one_line_with_a_hint_bugs_and_debug_keep_the_traceback(monkeypatch, capsys):
    """An input error is one line plus how to see more; `--debug` (on every command) or
    SCIFFUSION_DEBUG=1 shows its traceback; a bug (not the user's fault) always keeps its traceback."""
    monkeypatch.delenv("SCIFFUSION_DEBUG", raising=False)
    argv = _raising(monkeypatch, ValueError("--size must be even"))
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sciffusion simulate: error: --size must be even", "  (--debug or SCIFFUSION_DEBUG=1 shows the traceback)"]
    with pytest.raises(ValueError, match="--size must be even"):
        main([*argv, "--debug"])
    for bug in (RuntimeError("shape mismatch"), AttributeError("no attribute 'foo'"), IndexError("out of bounds")):
        with pytest.raises(type(bug)):
            main(_raising(monkeypatch, bug))
    monkeypatch.setenv("SCIFFUSION_DEBUG", "1")
    with pytest.raises(ValueError, match="--size must be even"):
        main(_raising(monkeypatch, ValueError("--size must be even")))


def test_user_error_is_importable_from_the_cli():
    from sciffusion.cli import UserError
    from sciffusion.commands._common import UserError as Common

    assert UserError is Common


# ---------------------------------------------------------------- 9. --threads
@pytest.mark.parametrize("command", ["simulate", "sample", "train", "score"])
def test_threads_reaches_torch_inside_every_command(monkeypatch, command):
    """`--threads N` is applied before the command runs (a number unlike torch's current one)."""
    seen, before = [], torch.get_num_threads()
    monkeypatch.setattr(f"sciffusion.commands.{command}.run", lambda args: seen.append(torch.get_num_threads()))
    argv = {"simulate": ["lorenz96", "-o", "x.zarr"], "sample": ["ckpt", "data.zarr", "-o", "x.zarr"],
            "train": ["cfg.toml"], "score": ["f.zarr", "t.zarr"]}[command]
    try:
        assert main([command, *argv, "--threads", str(before + 1)]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [before + 1]


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "lorenz96", "-o", "x.zarr", "--threads", "0"])
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err


# ---------------------------------------------------------------- 11a. demo does not clobber silently
def test_demo_refuses_a_non_empty_output_directory_without_overwrite_or_resume(tmp_path, capsys):
    out = tmp_path / "sciffusion_demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--overwrite" in err and "--resume" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
