"""The train / sample / demo commands end to end at tiny size."""

import json

import numpy as np
import pytest
import xarray as xr

import sciffusion.emulators as gen_module
from sciffusion.cli import main
from sciffusion.data import write_zarr
from sciffusion.demo import demo_dataset


@pytest.fixture
def trained(tmp_path):
    ds = demo_dataset(n_time=80, size=8, seed=1)
    write_zarr(ds, tmp_path / "data.zarr")
    cfg = {
        "data": {"path": str(tmp_path / "data.zarr"), "variables": ["u"], "grid_dims": ["y", "x"], "along": "time",
                 "offset": 1, "validation_fraction": 0.1},
        "model": {"net": "UNet2d", "kwargs": {"channels": [8, 16], "blocks_per_level": 1, "padding": "circular",
                                              "attention_levels": [], "groups": 4}},
        "training": {"out_dir": str(tmp_path / "run"), "steps": 6, "batch_size": 8, "checkpoint_every": 3},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "cfg.json"), "--no-progress"]) == 0
    return tmp_path


def test_train_writes_checkpoints_and_resumes_to_more_steps(trained, capsys):
    assert (trained / "run" / "latest").read_text() == "step_00000006"
    assert main(["train", str(trained / "cfg.json"), "--steps", "9", "--no-progress"]) == 0
    assert "trained to step 9" in capsys.readouterr().out
    lines = (trained / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == list(range(1, 10))
    config = json.loads((trained / "run" / "step_00000009" / "config.json").read_text())
    assert config["normalizer"] and config["data"]["variables"] == ["u"]


def test_sample_writes_ensemble_with_member_dim_provenance_and_cf_attrs(trained):
    out = trained / "ens.zarr"
    assert main(["sample", str(trained / "run"), str(trained / "data.zarr"), "-o", str(out), "--members", "6",
                 "--member-chunk", "4", "--cases", "0", "5", "--steps", "3", "--no-progress"]) == 0
    ens = xr.open_zarr(out)
    assert dict(ens.sizes) == {"case": 2, "member": 6, "y": 8, "x": 8}
    assert list(ens["member"].values) == list(range(6))
    assert list(ens["target_time"].values) == [1, 6]
    assert ens["u"].attrs["long_name"] == "advected random field"
    assert ens.attrs["sciffusion_version"] and len(ens.attrs["checkpoint_sha256"]) == 64 and ens.attrs["seed"] == 0
    assert json.loads(ens.attrs["sampler"]) == {"method": "heun", "steps": 3}
    assert np.isfinite(ens["u"].values).all()
    assert ens["u"].encoding["chunks"][1] == 4  # member chunks kept whole per block


def test_sample_refuses_existing_output_and_resume_skips_finished_blocks(trained, monkeypatch, capsys):
    """An interrupted run resumed with --resume computes only the missing member blocks and
    gives exactly the same ensemble as an uninterrupted run (per-member seeds)."""
    args = [str(trained / "run"), str(trained / "data.zarr"), "--members", "8", "--member-chunk", "4",
            "--cases", "0", "1", "--steps", "3", "--no-progress"]
    assert main(["sample", *args, "-o", str(trained / "straight.zarr")]) == 0
    assert main(["sample", *args, "-o", str(trained / "straight.zarr")]) == 2
    assert "straight.zarr exists" in capsys.readouterr().err

    real, calls = gen_module.generate, []

    def crash_after_first(*a, **k):
        calls.append(list(a[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr("sciffusion.emulators.generate", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        main(["sample", *args, "-o", str(trained / "resumed.zarr")])
    calls.clear()
    assert main(["sample", *args, "-o", str(trained / "resumed.zarr"), "--resume"]) == 0
    assert calls == [[4, 5, 6, 7]]
    a = xr.open_zarr(trained / "straight.zarr")["u"].values
    b = xr.open_zarr(trained / "resumed.zarr")["u"].values
    np.testing.assert_array_equal(a, b)


def test_bad_config_names_the_missing_variable(trained, capsys):
    cfg = json.loads((trained / "cfg.json").read_text())
    cfg["data"]["variables"] = ["vorticity"]
    (trained / "bad.json").write_text(json.dumps(cfg))
    assert main(["train", str(trained / "bad.json"), "--no-progress"]) == 2
    assert "vorticity" in capsys.readouterr().err
    assert main(["train", str(trained / "missing.toml")]) == 2


def test_demo_runs_end_to_end_at_tiny_size(tmp_path, capsys):
    """`sciffusion demo` simulates Lorenz-96 physics ensembles, generates members from 2 seeds with
    the emulator shipped in the package, and writes the ensemble (member dim, provenance), the
    plots and the skill table; the 31-member physics ensemble beats its own 2 seeds in CRPS."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-init", "2", "--members", "4", "--steps", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "physics (31)" in printed and "emulated (4)" in printed and "crps by lead" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scores"]) == {"2 seeds", "physics (31)", "emulated (4)"}
    ens = xr.open_zarr(out / "ensemble.zarr")
    assert dict(ens.sizes) == {"init_time": 2, "lead_time": 6, "member": 4, "k": 40}
    assert len(ens.attrs["checkpoint_sha256"]) == 64 and json.loads(ens.attrs["sampler"])["steps"] == 3
    assert np.isfinite(ens["x"].values).all()
    assert (out / "rank_histogram.png").stat().st_size > 1000 and (out / "spread_skill.png").stat().st_size > 1000
    scores = summary["scores"]
    assert scores["physics (31)"]["crps"] < scores["2 seeds"]["crps"]


def test_sample_with_philox_streams_records_them_keeps_members_stable_and_refuses_a_resume_without(trained, capsys):
    """``--rng philox``: recorded in the sampler attribute, member k the same whatever --member-chunk,
    other numbers than the default streams, and a resume with the default streams refused by name."""
    base = [str(trained / "run"), str(trained / "data.zarr"), "--cases", "0", "1", "--steps", "3", "--no-progress"]
    a, b, c = trained / "a.zarr", trained / "b.zarr", trained / "c.zarr"
    assert main(["sample", *base, "-o", str(a), "--members", "4", "--member-chunk", "2", "--rng", "philox"]) == 0
    assert main(["sample", *base, "-o", str(b), "--members", "2", "--member-chunk", "1", "--rng", "philox"]) == 0
    assert main(["sample", *base, "-o", str(c), "--members", "2"]) == 0
    ea, eb, ec = (xr.open_zarr(p)["u"].values for p in (a, b, c))
    assert json.loads(xr.open_zarr(a).attrs["sampler"]) == {"method": "heun", "steps": 3, "rng": "philox"}
    np.testing.assert_array_equal(ea[:, :2], eb)
    assert not np.allclose(eb, ec)
    assert main(["sample", *base, "-o", str(a), "--members", "4", "--member-chunk", "2", "--resume"]) != 0
    assert "rng" in capsys.readouterr().err
