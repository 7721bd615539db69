"""Seeds stay local (issue 20): every ``fit`` leaves the caller's global torch RNG state as it
found it, and gives the same weights whatever that state was (its randomness comes from its own
``seed``). The bit-for-bit equality with the pre-change outputs is tests/test_reference_outputs.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sciffusion.training import seeded

_spec = importlib.util.spec_from_file_location("make_reference_outputs",
                                               Path(__file__).resolve().parent / "data" / "make_reference_outputs.py")
REF = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(REF)
CONV1D = {"name": "PeriodicConv1d", "kwargs": {"width": 8, "n_blocks": 1}}


def _fit_ensemble(tmp):
    from sciffusion.emulators import EnsembleEmulator

    return EnsembleEmulator.fit(REF.seeds_data(n=8), net={"kwargs": {"width": 8, "n_blocks": 1, "groups": 4}},
                                steps=2, batch_size=8, warmup_steps=1).denoiser


def _fit_ensemble_eof(tmp):
    from sciffusion.emulators import EnsembleEmulator

    net = {"name": "EOFMLP", "kwargs": {"rank": 2, "cond_rank": 4, "width": 16, "depth": 2}}
    return EnsembleEmulator.fit(REF.seeds_data(), net=net, steps=2, batch_size=8, warmup_steps=1).denoiser


def _fit_rollout(tmp):
    from sciffusion.emulators import Rollout

    return Rollout.fit(REF.ar1_data(), net=CONV1D, steps=2, batch_size=8, warmup_steps=1, out_dir=tmp / "run").denoiser


def _fit_dyffusion(tmp):
    from sciffusion.emulators import DYffusion

    model = DYffusion.fit(REF.ar1_data(), net=CONV1D, horizon=2, steps=2, batch_size=8, warmup_steps=1)
    return torch.nn.ModuleList([model.interpolator, model.forecaster])


def _fit_downscaler(tmp):
    from sciffusion.emulators import Downscaler

    return Downscaler.fit(REF.sst_data(n_time=2), factor=4, steps=1, batch_size=2, warmup_steps=1,
                          net={"kwargs": {"channels": [8, 8], "groups": 4}}).denoiser


def _fit_config(tmp):
    from sciffusion.recipes import train_from_config

    cfg = {"data": {"variables": ["u"], "grid_dims": ["y", "x"], "along": "time", "offset": 1},
           "model": {"net": "UNet2d", "kwargs": {"channels": [8], "blocks_per_level": 1, "padding": "circular",
                                                 "attention_levels": [], "groups": 4}},
           "training": {"out_dir": str(tmp), "steps": 1, "batch_size": 4, "checkpoint_every": 1}}
    return train_from_config(cfg, ds=REF.grid_data(), progress=False).ema


FITS = {"ensemble": _fit_ensemble, "ensemble_eof": _fit_ensemble_eof, "rollout": _fit_rollout,
        "dyffusion": _fit_dyffusion, "downscaler": _fit_downscaler, "config": _fit_config}


def _rng_states():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return [torch.get_rng_state(), *cuda]


def _weights(module):
    return [p.detach().cpu().clone() for p in module.parameters()]


@pytest.mark.parametrize("name", list(FITS))
def test_fit_leaves_the_callers_global_rng_alone_and_does_not_depend_on_it(name, tmp_path):
    trained = []
    for k, caller_seed in enumerate((11, 12)):
        torch.manual_seed(caller_seed)
        before = _rng_states()
        trained.append(_weights(FITS[name](tmp_path / f"run{k}")))
        after = _rng_states()
        assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))
    for a, b in zip(*trained, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_seeded_draws_the_seeds_stream_inside_and_gives_the_caller_its_stream_back_even_after_an_error():
    def draws(seed, n=3):
        return torch.rand(n, generator=torch.Generator().manual_seed(seed)).numpy()

    torch.manual_seed(5)
    with seeded(7):
        np.testing.assert_array_equal(torch.rand(3).numpy(), draws(7))
    np.testing.assert_array_equal(torch.rand(3).numpy(), draws(5))
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match="boom"), seeded(7):
        torch.rand(10)
        raise RuntimeError("boom")
    np.testing.assert_array_equal(torch.rand(3).numpy(), draws(5))
