"""``sciffusion score FORECAST TRUTH``: verify an ensemble against the truth.

Reads zarr (a directory or ``*.zarr``) or netCDF, scores every forecast variable that has the
member dimension (CRPS, ensemble-mean RMSE and bias, spread, spread-skill ratio), averaging
over ``--reduce`` dims with latitude weights, writes ``scores.nc`` and ``scores.csv`` plus PNG
plots to ``--out``, and prints the table.

The inputs are opened lazily (dask arrays chunked as stored), so memory stays bounded by a few
chunks per thread. ``--workers N`` computes on a local dask cluster of N worker processes
(``--memory-limit`` each), ``--scheduler ADDRESS`` on a running cluster; the numbers are the
same. See ``docs/scale.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "score"
HELP = "score an ensemble forecast against the truth (CRPS, RMSE, spread-skill, plots)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("forecast", help="forecast ensemble: zarr store or netCDF file")
    parser.add_argument("truth", help="verifying data: zarr store or netCDF file")
    parser.add_argument("--member-dim", default="member", help="ensemble dimension (default: member)")
    parser.add_argument("--reduce", nargs="*", default=None, metavar="DIM",
                        help="dims to average over (e.g. --reduce lat lon); default: all but the first")
    parser.add_argument("--fair", action="store_true", help="fair (unbiased) CRPS")
    parser.add_argument("--weights", choices=["area", "cos", "none"], default="area",
                        help="latitude weights when averaging over latitude (default: area)")
    parser.add_argument("--variables", nargs="*", default=None, help="score only these variables")
    parser.add_argument("--out", default=None, help="output directory (default: print only)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="compute on the dask cluster at ADDRESS (tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N", help="compute on a local dask cluster of N worker processes")
    parser.add_argument("--memory-limit", default="auto", metavar="SIZE",
                        help="memory per local worker with --workers, e.g. 2GiB (default: auto)")


def _open(path: str, role: str, member_dim: str | None = None, target_bytes: int = 64 * 2**20):
    """Open zarr/netCDF lazily with the stored chunks.

    A zarr store whose chunks split ``member_dim`` (as ``sciffusion sample`` writes ensembles:
    all cases, a block of members per chunk) is opened instead with ``member`` whole and its
    first other dim cut to about ``target_bytes`` per chunk, read straight from the store: each
    task then holds one such chunk and one stored chunk at a time, whereas rechunking after
    opening would hold whole stored chunks for every target chunk they feed.
    """
    import warnings

    import xarray as xr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{role} {path!r} does not exist")
    if p.is_dir() or p.suffix == ".zarr":
        with warnings.catch_warnings():  # zarr v3 stores without consolidated metadata are fine
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(p)
            chunks = _member_whole_chunks(ds, member_dim, target_bytes) if member_dim else None
            if chunks:
                warnings.filterwarnings("ignore", message=".*separate the stored chunks.*")
                ds = xr.open_zarr(p, chunks=chunks)
    else:
        ds = xr.open_dataset(p, chunks={})
    return ds.to_dataset() if isinstance(ds, xr.DataArray) else ds


def _member_whole_chunks(ds, member_dim: str, target_bytes: int) -> dict | None:
    """``{member_dim: -1, first_dim: k}`` when a variable's stored chunks split ``member_dim``."""
    for v in ds.data_vars.values():
        if member_dim in v.dims and v.chunks is not None and len(v.chunks[v.get_axis_num(member_dim)]) > 1:
            others = [d for d in v.dims if d != member_dim]
            if not others:
                return {member_dim: -1}
            per_slice = v.dtype.itemsize * v.size // v.sizes[others[0]]
            return {member_dim: -1, others[0]: max(1, int(target_bytes // max(per_slice, 1)))}
    return None


def _select_truth(fc, truth, name: str):
    """Pick the truth at the forecast's coordinates (truth may cover more); fail naming the dim."""
    for d in fc.dims:
        if d not in truth.dims or d not in fc.indexes or d not in truth.indexes:
            continue
        fi, ti = fc.indexes[d], truth.indexes[d]
        if fi.equals(ti):
            continue
        if len(fi.intersection(ti)) == len(fi):
            truth = truth.sel({d: fi})
        else:
            raise ValueError(f"variable {name!r}: forecast and truth grids do not align along {d!r} "
                             f"(forecast {fi[0]}..{fi[-1]} n={len(fi)}, truth {ti[0]}..{ti[-1]} n={len(ti)})")
    return truth


def _lat_dim(da):
    return next((d for d in ("lat", "latitude") if d in da.dims and d in da.coords), None)


def score_dataset(forecast, truth, *, member_dim="member", reduce=None, fair=False,
                  weights="area", variables=None):
    """Score every variable of ``forecast`` with ``member_dim``; returns ``{var: Dataset}`` (lazy)."""
    import sciffusion.metrics as sm

    names = variables or [v for v in forecast.data_vars if member_dim in forecast[v].dims]
    if not names:
        dims = sorted({str(d) for v in forecast.data_vars.values() for d in v.dims})
        raise ValueError(f"no variable in FORECAST has the member dimension {member_dim!r} "
                         f"(its dims are {dims}); use --member-dim")
    out = {}
    for name in names:
        if name not in forecast.data_vars:
            raise KeyError(f"variable {name!r} not in FORECAST (has {list(forecast.data_vars)})")
        if name not in truth.data_vars:
            raise KeyError(f"variable {name!r} is in FORECAST but missing from TRUTH "
                           f"(TRUTH has {list(truth.data_vars)})")
        fc = forecast[name]
        if member_dim not in fc.dims:
            raise ValueError(f"variable {name!r} has no member dimension {member_dim!r} "
                             f"(dims {tuple(fc.dims)}); use --member-dim")
        ob = _select_truth(fc, truth[name], name)
        if member_dim in ob.dims:
            raise ValueError(f"TRUTH variable {name!r} has the member dimension {member_dim!r}")
        dims = [d for d in fc.dims if d != member_dim]
        rdims = dims[1:] if reduce is None else list(reduce)
        missing = [d for d in rdims if d not in dims]
        if missing:
            raise ValueError(f"variable {name!r}: --reduce dims {missing} not in its dims {dims}")
        lat = _lat_dim(fc)
        w = None
        if weights != "none" and lat in rdims:
            w = sm.latitude_weights(fc[lat], kind=weights)
        kw = dict(member_dim=member_dim, reduce_dims=rdims or None, weights=w)
        comp = sm.spread_skill_ratio(fc, ob, components=True, **kw)
        out[name] = _dataset(
            fc.attrs, name,
            crps=sm.crps_ensemble(fc, ob, fair=fair, **kw),
            rmse=comp["skill"], bias=sm.bias(fc, ob, **kw),
            spread=comp["spread"], spread_skill_ratio=comp["ratio"],
        )
    return out


SCORE_NAMES = {"crps": "continuous ranked probability score", "rmse": "root-mean-square error of the ensemble mean",
               "bias": "mean error of the ensemble mean", "spread": "ensemble spread",
               "spread_skill_ratio": "spread-skill ratio"}


def _dataset(source_attrs, name, **variables):
    """Scores of variable ``name`` as a Dataset carrying its CF attributes: scores in the variable's
    units keep ``units``; each gets a ``long_name`` built from the variable's, the ratio is unitless."""
    import xarray as xr

    what = source_attrs.get("long_name") or source_attrs.get("standard_name") or name
    ds = xr.Dataset({k: v.drop_attrs() if hasattr(v, "drop_attrs") else v for k, v in variables.items()})
    for k in ds.data_vars:
        attrs = {"long_name": f"{SCORE_NAMES.get(k, k)} of {what}", "source_variable": str(name)}
        if "standard_name" in source_attrs:
            attrs["source_standard_name"] = source_attrs["standard_name"]
        if k == "spread_skill_ratio":
            attrs["units"] = "1"
        elif "units" in source_attrs:
            attrs["units"] = source_attrs["units"]
        ds[k].attrs.update(attrs)
    return ds


def _plots(forecast, truth, scores, names, member_dim, out: Path):
    import sciffusion.metrics as sm
    from sciffusion import plot

    for name in names:
        fc = forecast[name]
        ob = _select_truth(fc, truth[name], name)
        figs = {"rank_histogram": plot.rank_histogram(
            sm.rank_histogram(fc, ob, member_dim=member_dim, reduce_dims="all"), title=name)}
        thr = float(ob.mean())
        figs["reliability"] = plot.reliability_diagram(
            sm.reliability(fc, ob, thr, member_dim=member_dim, reduce_dims="all"),
            title=f"{name} > {thr:.3g}")
        lat, lon = _lat_dim(fc), next((d for d in ("lon", "longitude") if d in fc.dims), None)
        if lat and lon:
            figs["crps_map"] = plot.crps_map(sm.crps_ensemble(fc, ob, member_dim=member_dim),
                                             lat_dim=lat, lon_dim=lon, title=f"{name} CRPS")
            figs["spectrum"] = plot.power_spectrum(
                {"truth": sm.zonal_spectrum(ob, lon_dim=lon, reduce_dims="all"),
                 "forecast": sm.zonal_spectrum(fc, lon_dim=lon, reduce_dims="all")}, title=name)
        s = scores[name]
        if s["spread"].ndim == 1 and s["spread"].size > 1:
            figs["spread_skill"] = plot.spread_skill(s["spread"], s["rmse"], title=name)
        for kind, fig in figs.items():
            fig.savefig(out / f"{name}_{kind}.png", dpi=100)


def run(args) -> int:
    scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
    if scheduler is None and workers is None:
        return _run(args)
    from sciffusion.cli import UserError
    from sciffusion.distributed import SchedulerUnreachable, dask_client

    try:
        with dask_client(scheduler, workers, memory_limit=args.memory_limit) as client:
            print(f"computing on the dask cluster at {client.scheduler.address} ({len(client.nthreads())} workers)")
            return _run(args)  # dask computes on the client's cluster while it is open
    except SchedulerUnreachable as exc:
        raise UserError(str(exc)) from exc


def _run(args) -> int:
    import pandas as pd

    forecast, truth = _open(args.forecast, "FORECAST", args.member_dim), _open(args.truth, "TRUTH")
    scores = score_dataset(forecast, truth, member_dim=args.member_dim, reduce=args.reduce,
                           fair=args.fair, weights=args.weights, variables=args.variables)
    keys = [(name, k) for name, ds in scores.items() for k in ds.data_vars]
    import xarray as xr

    merged = xr.Dataset({f"{name}_{k}": scores[name][k] for name, k in keys}).compute()  # one pass
    scores = {name: xr.Dataset({k: merged[f"{name}_{k}"] for n, k in keys if n == name}) for name in scores}
    frames = []
    for name, ds in scores.items():
        df = ds.to_dataframe() if ds.sizes else pd.DataFrame({k: [float(v)] for k, v in ds.data_vars.items()})
        df = df.reset_index() if ds.sizes else df
        df.insert(0, "variable", name)
        frames.append(df)
    table = pd.concat(frames, ignore_index=True)
    with pd.option_context("display.max_rows", 40, "display.width", 120):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", max_rows=40))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        merged.attrs.update(forecast=str(args.forecast), truth=str(args.truth), fair_crps=int(args.fair),
                            member_dim=args.member_dim)
        merged.to_netcdf(out / "scores.nc")
        table.to_csv(out / "scores.csv", index=False)
        if not args.no_plots:
            _plots(forecast, truth, scores, list(scores), args.member_dim, out)
        print(f"wrote {out / 'scores.nc'}, {out / 'scores.csv'}" + ("" if args.no_plots else " and plots"))
    return 0
