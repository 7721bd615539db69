"""The README's main path at tiny size: simulate -> train -> sample -> score, through the CLI."""

import numpy as np
import pandas as pd
import properscoring
import xarray as xr

from sciffusion.cli import main

CONFIG = """
[data]
path = "{path}"
variables = ["vorticity_truth"]
grid_dims = ["y", "x"]
along = "lead_time"
offset = 1
validation_fraction = 0.0

[model]
net = "UNet2d"
sigma_data = 1.0
kwargs = {{ channels = [4, 8], blocks_per_level = 1, padding = "circular" }}

[training]
out_dir = "{run}"
steps = 3
batch_size = 4
checkpoint_every = 3
"""


def test_simulate_train_sample_score_gives_one_row_per_case(tmp_path, capsys):
    """`score ens.zarr kf.zarr` right after `sample` verifies each case against the truth at its
    init_time and target lead (one row per case, not a cross product with the truth's
    init_time x lead_time), and its CRPS equals properscoring's on the aligned arrays."""
    kf, ens, run, out = (str(tmp_path / n) for n in ("kf.zarr", "ens.zarr", "run", "scores"))
    assert main(["simulate", "kolmogorov", "--size", "12", "--n-init", "3", "--n-leads", "3", "--members", "1",
                 "--spinup", "0.1", "--lead-interval", "0.05", "--init-interval", "0.05", "-o", kf, "--no-progress"]) == 0
    (tmp_path / "train.toml").write_text(CONFIG.format(path=kf, run=run))
    assert main(["train", str(tmp_path / "train.toml"), "--no-progress"]) == 0
    assert main(["sample", run, kf, "-o", ens, "--members", "3", "--steps", "2", "--no-progress"]) == 0
    assert main(["score", ens, kf, "--out", out, "--no-plots"]) == 0
    capsys.readouterr()

    fc = xr.open_zarr(ens)["vorticity_truth"].load()
    truth = xr.open_zarr(kf)["vorticity_truth"].load()
    assert fc.sizes["case"] == 9  # 3 init times x 3 condition/target lead pairs
    table = pd.read_csv(f"{out}/scores.csv")
    assert len(table) == fc.sizes["case"]
    assert list(table.columns[:4]) == ["variable", "case", "init_time", "target_lead_time"]
    np.testing.assert_allclose(table["target_lead_time"], fc["target_lead_time"].values)

    obs = np.stack([truth.sel(init_time=i, lead_time=t).values
                    for i, t in zip(fc["init_time"].values, fc["target_lead_time"].values)])
    crps = properscoring.crps_ensemble(obs, np.moveaxis(fc.values, 1, -1)).mean(axis=(1, 2))
    np.testing.assert_allclose(table["crps"], crps, rtol=1e-5)
