"""A tiny periodic U-Net trained by ``sciffusion train`` on 8x8 advected random fields: the
checkpoint several command-line and sampling tests start from."""

import json

from sciffusion.cli import main
from sciffusion.data import write_zarr
from sciffusion.demo import demo_dataset


def tiny_config(data, run_dir, *, channels=(8, 16), **training) -> dict:
    """A train config for variable ``u`` of ``data``, pairs along time, a circular U-Net of ``channels``,
    checkpoints in ``run_dir`` (``training`` may override it with ``out_dir``)."""
    unet = {"channels": list(channels), "blocks_per_level": 1, "padding": "circular", "attention_levels": [], "groups": 4}
    return {"data": {"path": str(data), "variables": ["u"], "grid_dims": ["y", "x"], "along": "time", "offset": 1},
            "model": {"net": "UNet2d", "kwargs": unet},
            "training": {"out_dir": str(run_dir), **training}}


def train_tiny(tmp, *, n_time, channels=(8, 16), steps, batch_size):
    """Write ``tmp/data.zarr`` (``n_time`` fields) and train ``steps`` steps into ``tmp/run`` through the CLI."""
    write_zarr(demo_dataset(n_time=n_time, size=8, seed=1), tmp / "data.zarr")
    cfg = tiny_config(tmp / "data.zarr", tmp / "run", channels=channels, steps=steps, batch_size=batch_size,
                      checkpoint_every=steps)
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp / "cfg.json"), "--no-progress"]) == 0
    return tmp
