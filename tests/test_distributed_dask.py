"""Ensemble generation and scoring on a dask LocalCluster (2 workers) give the single-process numbers."""

import dask
import numpy as np
import pytest
import torch
import xarray as xr

import sciffusion.distributed.generate as dgen
from sciffusion.cli import main
from sciffusion.commands.score import score_dataset
from sciffusion.distributed import SchedulerUnreachable, dask_client
from sciffusion.emulators import EnsembleStore
from sciffusion.recipes import sample_from_checkpoint
from _tiny import train_tiny

distributed = pytest.importorskip("distributed")

CASES = [0, 1, 2, 3, 5]
KW = dict(n_members=6, member_chunk=2, cases=CASES, steps=2, batch_size=3, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dask")
    torch.set_num_threads(1)
    train_tiny(tmp, n_time=40, channels=[8, 16], steps=3, batch_size=8)
    single = sample_from_checkpoint(tmp / "run", tmp / "data.zarr", tmp / "single.zarr", **KW)
    return tmp, single["u"].values


@pytest.fixture(scope="module")
def client():
    """Two single-threaded workers in this process, reachable over tcp (so the CLI can connect);
    not the default client, so plain dask computations here stay on the threaded scheduler."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster, set_as_default=False) as c:
            yield c


def test_cluster_generation_equals_single_process_with_one_model_load_per_worker(trained, client):
    """Tasks of one 3-sample batch (3 blocks x 4 tasks, cut mid-case, on 2 workers) reproduce the
    single-process ensemble bit for bit (per-(seed, case, member) streams, same batches), and
    each worker loads the model once."""
    tmp, single = trained
    dgen._MODELS.clear(), dgen._LOADS.clear()
    ens = sample_from_checkpoint(tmp / "run", tmp / "data.zarr", tmp / "tiles.zarr", scheduler=client,
                                 batches_per_task=1, **KW)
    np.testing.assert_array_equal(ens["u"].values, single)
    loads = dgen.model_loads()
    assert set(loads) <= set(client.nthreads()) and sum(loads.values()) == len(loads) <= 2
    ref = xr.open_zarr(tmp / "single.zarr")
    assert {k: v for k, v in ens.attrs.items() if k != "created"} == {k: v for k, v in ref.attrs.items() if k != "created"}
    assert ens["u"].encoding["chunks"][1] == 2  # member blocks stay whole zarr chunks


def test_interrupted_cluster_run_resumes_only_missing_blocks_to_the_same_ensemble(trained, client, monkeypatch):
    """A task failure stops the run with blocks recorded as written; mode='resume' computes only
    the missing member blocks and ends equal to the single-process ensemble."""
    tmp, single = trained
    real = dgen.generate_tile

    def failing(model, cond, case_ids, jobs, **kw):  # jobs: (case, member) pairs
        if jobs[0][1] in (2, 3):
            raise RuntimeError("simulated worker crash")
        return real(model, cond, case_ids, jobs, **kw)

    monkeypatch.setattr(dgen, "generate_tile", failing)
    with pytest.raises(RuntimeError, match="simulated worker crash"):
        sample_from_checkpoint(tmp / "run", tmp / "data.zarr", tmp / "resumed.zarr", scheduler=client, **KW)
    partial = xr.open_zarr(tmp / "resumed.zarr", consolidated=False)
    store = EnsembleStore(tmp / "resumed.zarr", partial.isel(member=0, drop=True), 6, member_chunk=2, mode="resume")
    missing = [b.start for b in store.missing()]
    assert 2 in missing  # the failed block is not recorded; blocks recorded as done hold their data
    for start in sorted({0, 2, 4} - set(missing)):
        np.testing.assert_array_equal(partial["u"].values[:, start : start + 2], single[:, start : start + 2])
    log = tmp / "tiles.log"  # tasks are serialised to the workers, so they log to a file

    def logged(model, cond, case_ids, jobs, **kw):
        with open(log, "a") as f:
            f.write(f"{jobs[0][1] // 2 * 2}\n")  # the block's first member
        return real(model, cond, case_ids, jobs, **kw)

    monkeypatch.setattr(dgen, "generate_tile", logged)
    ens = sample_from_checkpoint(tmp / "run", tmp / "data.zarr", tmp / "resumed.zarr", scheduler=client,
                                 mode="resume", **KW)
    assert sorted({int(s) for s in log.read_text().split()}) == missing
    np.testing.assert_array_equal(ens["u"].values, single)


def test_cli_sample_with_local_workers_equals_single_process(trained):
    """`sciffusion sample --workers 2` (a LocalCluster of 2 worker processes) writes the same ensemble."""
    tmp, single = trained
    argv = ["sample", str(tmp / "run"), str(tmp / "data.zarr"), "-o", str(tmp / "cli.zarr"), "--members", "6",
            "--member-chunk", "2", "--cases", *map(str, CASES), "--steps", "2", "--batch-size", "3",
            "--workers", "2", "--no-progress"]
    assert main(argv) == 0
    np.testing.assert_array_equal(xr.open_zarr(tmp / "cli.zarr")["u"].values, single)


def _truth(tmp):
    """The verifying fields of the selected cases, on the ensemble's (case, y, x) grid."""
    ds = xr.open_zarr(tmp / "data.zarr")
    ens = xr.open_zarr(tmp / "single.zarr")
    u = ds["u"].isel(time=ens["target_time"].values).rename(time="case").assign_coords(case=ens["case"].values)
    xr.Dataset({"u": u.drop_vars([c for c in u.coords if c not in ("case", "y", "x")])}).to_zarr(
        tmp / "truth.zarr", mode="w", consolidated=False)


def test_scores_on_the_cluster_equal_threaded_scores_and_stay_lazy(trained, client):
    """score_dataset on dask-backed zarr inputs is lazy (no value read until compute) and gives
    the same CRPS/RMSE/spread on the cluster as with the threaded scheduler."""
    tmp, _ = trained
    _truth(tmp)
    from sciffusion.commands.score import _open

    fc = _open(str(tmp / "single.zarr"), "FORECAST", "member", target_bytes=2 * 6 * 8 * 8 * 4)  # 2 cases a chunk
    ob = _open(str(tmp / "truth.zarr"), "TRUTH").chunk(case=2)
    scores = score_dataset(fc, ob, reduce=["y", "x"])["u"]
    assert all(v.chunks is not None for v in scores.data_vars.values())
    with dask.config.set(scheduler="threads"):  # (dask.compute(ds, scheduler=...) trips a dask bug)
        local = scores.compute()
    with dask.config.set(scheduler=client):
        remote = scores.compute()
    for k in ("crps", "rmse", "bias", "spread", "spread_skill_ratio"):
        np.testing.assert_allclose(remote[k].values, local[k].values, rtol=1e-12, atol=0)
    crps_case0 = np.mean(np.abs(fc["u"].values[0] - ob["u"].values[0]).mean(0)
                         - 0.5 * np.abs(fc["u"].values[0][:, None] - fc["u"].values[0][None]).mean((0, 1)))
    np.testing.assert_allclose(local["crps"].values[0], crps_case0, rtol=1e-5)


def test_cli_score_on_a_scheduler_address_equals_plain_score(trained, client, capsys):
    """`sciffusion score --scheduler ADDRESS` writes the same scores.nc as `sciffusion score`."""
    tmp, _ = trained
    _truth(tmp)
    base = ["score", str(tmp / "single.zarr"), str(tmp / "truth.zarr"), "--reduce", "y", "x", "--no-plots"]
    assert main([*base, "--out", str(tmp / "plain")]) == 0
    assert main([*base, "--out", str(tmp / "remote"), "--scheduler", client.scheduler.address]) == 0
    assert f"dask cluster at {client.scheduler.address}" in capsys.readouterr().out
    a, b = xr.open_dataset(tmp / "plain" / "scores.nc"), xr.open_dataset(tmp / "remote" / "scores.nc")
    for k in a.data_vars:
        np.testing.assert_array_equal(a[k].values, b[k].values)


def test_score_reads_a_member_blocked_store_with_member_whole_bounded_chunks(trained):
    """`sciffusion score` opens an ensemble written in member blocks (all cases per chunk) with
    the member dim whole and cases cut to the target size, read straight from zarr (no
    rechunk of whole stored chunks, no warning), with the stored values."""
    import warnings

    from sciffusion.commands.score import _open

    tmp, single = trained
    case_bytes = 6 * 8 * 8 * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc = _open(str(tmp / "single.zarr"), "FORECAST", "member", target_bytes=2 * case_bytes)
    assert fc["u"].chunks == ((2, 2, 1), (6,), (8,), (8,))
    assert not any("rechunk" in k for k in fc["u"].data.dask.layers)
    np.testing.assert_array_equal(fc["u"].values, single)


def test_unreachable_scheduler_is_named(capsys):
    with pytest.raises(SchedulerUnreachable, match="tcp://127.0.0.1:9"):
        with dask_client("tcp://127.0.0.1:9", timeout=1):
            pass
    with pytest.raises(ValueError, match="not both"):
        with dask_client("tcp://127.0.0.1:9", 2):
            pass
