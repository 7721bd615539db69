"""Resuming an ensemble store checks what it resumes: another checkpoint, seed or sampler is
refused naming the setting (nothing written), a new timestamp is not."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.cli import main
from sciffusion.emulators import EnsembleStore
from sciffusion.data.provenance import RUN_SPECIFIC, check_provenance
from sciffusion.recipes import sample_from_checkpoint
from _tiny import train_tiny

ATTRS = {"checkpoint_sha256": "a" * 64, "seed": 0, "sampler": json.dumps({"steps": 18}),
         "created": "2026-01-01T00:00:00Z", "history": "sciffusion sample run (members=4)"}
TEMPLATE = xr.Dataset({"u": (("case", "x"), np.zeros((2, 3), np.float32), {"units": "m s-1"})},
                      coords={"x": np.arange(3.0)})


def _half_written(path) -> np.ndarray:
    """A store of 4 members in blocks of 2 with only block 0 written; returns its values."""
    store = EnsembleStore(path, TEMPLATE, 4, member_chunk=2, member_axis=1, attrs=ATTRS)
    block = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    store.write(range(0, 2), {"u": block}, {"u": ("case", "member", "x")})
    return store.open()["u"].values


@pytest.mark.parametrize("key,value", [("seed", 7), ("checkpoint_sha256", "b" * 64),
                                       ("sampler", json.dumps({"steps": 4}))])
def test_resume_with_another_seed_checkpoint_or_sampler_is_refused_naming_it_and_keeps_the_data(tmp_path, key, value):
    path = tmp_path / "ens.zarr"
    before = _half_written(path)
    with pytest.raises(ValueError, match=rf"cannot resume .*{key}: stored {ATTRS[key]!r}, now {value!r}.*--overwrite"):
        EnsembleStore(path, TEMPLATE, 4, member_chunk=2, member_axis=1, attrs={**ATTRS, key: value}, mode="resume")
    after = EnsembleStore(path, TEMPLATE, 4, member_chunk=2, member_axis=1, attrs=ATTRS, mode="resume")
    np.testing.assert_array_equal(after.open()["u"].values, before)
    assert [b.start for b in after.missing()] == [2]
    assert xr.open_zarr(path, consolidated=False).attrs[key] == ATTRS[key]


def test_resume_with_a_new_timestamp_and_history_continues_the_store(tmp_path):
    path = tmp_path / "ens.zarr"
    before = _half_written(path)
    later = {**ATTRS, "created": "2026-01-02T00:00:00Z", "history": "sciffusion sample again"}
    store = EnsembleStore(path, TEMPLATE, 4, member_chunk=2, member_axis=1, attrs=later, mode="resume")
    store.write(range(2, 4), {"u": -np.ones((2, 2, 3), np.float32)}, {"u": ("case", "member", "x")})
    store.finalize()
    out = store.open()["u"].values
    np.testing.assert_array_equal(out[:, :2], before[:, :2])
    assert (out[:, 2:] == -1).all()


def test_check_provenance_names_every_differing_key_and_ignores_only_run_specific_ones():
    assert {"created", "history"} <= RUN_SPECIFIC
    check_provenance({**ATTRS, "seed": np.int64(0)}, {**ATTRS, "created": "later"}, "s.zarr")  # numpy == python
    check_provenance({"shape": [1, 2]}, {"shape": (1, 2)}, "s.zarr")  # zarr gives lists back
    with pytest.raises(ValueError, match=r"seed: stored 0, now 7; sampler: not stored, now 'x'") as err:
        check_provenance({"seed": 0}, {"seed": 7, "sampler": "x"}, "s.zarr")
    assert "\n" not in str(err.value)


def test_existing_store_error_names_the_command_line_flags(tmp_path):
    _half_written(tmp_path / "ens.zarr")
    with pytest.raises(FileExistsError, match=r"mode='w' \(--overwrite\).*mode='resume' \(--resume\)"):
        EnsembleStore(tmp_path / "ens.zarr", TEMPLATE, 4, member_chunk=2, member_axis=1, attrs=ATTRS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    torch.set_num_threads(1)
    return train_tiny(tmp, n_time=12, channels=[8], steps=1, batch_size=4)


def test_sample_resume_with_another_seed_or_step_count_is_refused(checkpoint, capsys):
    tmp = checkpoint
    kw = dict(n_members=2, member_chunk=2, cases=[0, 1], steps=2, batch_size=4, progress=False)
    first = sample_from_checkpoint(tmp / "run", tmp / "data.zarr", tmp / "ens.zarr", **kw)["u"].values
    with pytest.raises(ValueError, match=r"seed: stored 0, now 7"):
        sample_from_checkpoint(tmp / "run", tmp / "data.zarr", tmp / "ens.zarr", mode="resume", **{**kw, "seed": 7})
    argv = ["sample", str(tmp / "run"), str(tmp / "data.zarr"), "-o", str(tmp / "ens.zarr"), "--members", "2",
            "--member-chunk", "2", "--cases", "0", "1", "--steps", "4", "--batch-size", "4", "--no-progress", "--resume"]
    assert main(argv) == 2
    assert "sampler: stored" in capsys.readouterr().err
    np.testing.assert_array_equal(xr.open_zarr(tmp / "ens.zarr")["u"].values, first)
    again = sample_from_checkpoint(tmp / "run", tmp / "data.zarr", tmp / "ens.zarr", mode="resume", **kw)
    np.testing.assert_array_equal(again["u"].values, first)


def test_rollout_store_resume_uses_the_same_provenance_check(tmp_path):
    """A store written in blocks of times compares every setting (not a fixed key list): another seed,
    or another n_steps recorded in the provenance, is refused naming it, and the written times survive."""
    from sciffusion.data.store import BlockStore

    template = xr.Dataset({"u": (("member", "time", "x"), np.zeros((2, 4, 3), np.float32))},
                          coords={"time": np.arange(4.0)})
    attrs = {"seed": 0, "n_steps": 4, "sampler": json.dumps({"steps": 8}), "created": "2026-01-01T00:00:00Z"}
    store = BlockStore(tmp_path / "r.zarr", template, dim="time", block=2, attrs=attrs)
    store.write(range(0, 2), {"u": np.ones((2, 2, 3), np.float32)})
    for key, value in [("seed", 7), ("n_steps", 6)]:
        with pytest.raises(ValueError, match=rf"cannot resume .*{key}: stored {attrs[key]!r}, now {value!r}"):
            BlockStore(tmp_path / "r.zarr", template, dim="time", block=2, attrs={**attrs, key: value}, mode="resume")
    again = BlockStore(tmp_path / "r.zarr", template, dim="time", block=2, attrs={**attrs, "created": "later"}, mode="resume")
    assert again.written() == 2 and [b.start for b in again.missing()] == [2]
    np.testing.assert_array_equal(again.read([0, 1])["u"], np.ones((2, 2, 3)))


@pytest.mark.parametrize("record,value,done", [("sciffusion_completed_members", "[0]", [0]),
                                               ("sciffusion_completed_chunks", "[1]", [2]),
                                               ("sciffusion_completed_times", 2, [0])])
def test_stores_written_by_the_previous_release_resume_their_missing_blocks(tmp_path, record, value, done):
    """The completion records the three writers kept before the one store still say which blocks are done."""
    import zarr

    from sciffusion.data.store import RECORD, BlockStore

    template = xr.Dataset({"u": (("member", "x"), np.zeros((4, 3), np.float32))})
    BlockStore(tmp_path / "old.zarr", template, dim="member", block=2)
    attrs = zarr.open_group(str(tmp_path / "old.zarr"), mode="r+").attrs
    del attrs[RECORD]
    attrs[record] = value
    again = BlockStore(tmp_path / "old.zarr", template, dim="member", block=2, mode="resume")
    assert sorted(again.completed()) == done
