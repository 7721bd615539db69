"""``sciffusion score FORECAST TRUTH``: verify an ensemble against the truth.

Reads zarr (a directory or ``*.zarr``) or netCDF, scores every forecast variable that has the
member dimension (CRPS, ensemble-mean RMSE and bias, spread, spread-skill ratio), averaging
over ``--reduce`` dims with latitude weights, writes ``scores.nc`` and ``scores.csv`` plus PNG
plots to ``--out``, and prints the table.

The truth is taken at the forecast's points. An ensemble from ``sciffusion sample`` has a ``case``
dim whose coordinates say where each case came from (``init_time``, ``target_lead_time``): each
case is verified against the truth at that init time and target lead, so ``sciffusion score
ensemble.zarr kf.zarr`` gives one row per case (the default ``--reduce`` averages over all dims
but the first). Dims that still differ between the two files are refused, naming both.
Points where the truth or any member is NaN are left out of every score: a mask common to all
members and the truth (land) silently; otherwise with a warning giving the fraction. An entirely
NaN variable is refused, and so are members entirely NaN (an unfinished ``sample`` store) unless
``--allow-missing``, which scores the members present.

The inputs are opened lazily (dask arrays chunked as stored), so memory stays bounded by a few
chunks per thread. ``--workers N`` computes on a local dask cluster of N worker processes
(``--memory-limit`` each), ``--scheduler ADDRESS`` on a running cluster; the numbers are the
same. See ``docs/scale.md``. Intervals next to the scores and ``--compare B`` (differences, CRPS
skill, Diebold-Mariano): :mod:`sciffusion.commands._score_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "score"
HELP = "score an ensemble forecast against the truth (CRPS, RMSE, spread-skill, plots)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("forecast", help="forecast ensemble: zarr store or netCDF file")
    parser.add_argument("truth", help="verifying data: zarr store or netCDF file")
    parser.add_argument("--member-dim", default="member", help="ensemble dimension (default: member)")
    parser.add_argument("--reduce", nargs="*", default=None, metavar="DIM",
                        help="dims to average over (e.g. --reduce lat lon); default: all but the first "
                             "(a `sciffusion sample` ensemble: one row per case)")
    parser.add_argument("--fair", action="store_true", help="fair (unbiased) CRPS")
    parser.add_argument("--weights", choices=["area", "cos", "none"], default="area",
                        help="latitude weights when averaging over latitude (default: area)")
    parser.add_argument("--variables", nargs="*", default=None, help="score only these variables")
    parser.add_argument("--out", default=None, help="output directory (default: print only)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the members present when some members are entirely NaN (an unfinished sample store)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="compute on the dask cluster at ADDRESS (tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N", help="compute on a local dask cluster of N worker processes")
    parser.add_argument("--memory-limit", default="auto", metavar="SIZE",
                        help="memory per local worker with --workers, e.g. 2GiB (default: auto)")
    from sciffusion.commands import _score_report

    _score_report.add_arguments(parser)


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


def _truth_by_case(fc, truth, name: str, case: str = "case"):
    """The truth of each forecast case, picked pointwise (vectorised indexing along ``case``).

    ``sciffusion sample`` writes its cases with per-case coordinates naming where each came from:
    the sample dims (e.g. ``init_time``) and ``target_<along>`` (e.g. ``target_lead_time``). Each
    such coordinate that names a TRUTH dim (``target_`` stripped; the target wins over a
    same-named condition coordinate) selects along that dim. Unchanged when the forecast has no
    ``case`` dim or the truth has one already.
    """
    import numpy as np
    import xarray as xr

    if case not in fc.dims or case in truth.dims:
        return truth
    index = {}
    for c, v in fc.coords.items():
        dim = str(c).removeprefix("target_")
        if c != case and v.dims == (case,) and dim in truth.dims and (c != dim or dim not in index):
            index[dim] = (str(c), v.values)
    if not index:
        return truth
    for dim, (c, values) in index.items():
        absent = values[~np.isin(values, truth[dim].values)] if dim in truth.coords else values[:0]
        if absent.size:
            raise ValueError(f"variable {name!r}: FORECAST case coordinate {c!r} holds {dim} values missing "
                             f"from TRUTH (e.g. {absent[0]}, {absent.size} of {values.size} cases)")
    picked = truth.sel({dim: xr.DataArray(values, dims=case) for dim, (_, values) in index.items()})
    return picked.assign_coords({case: fc[case].values}) if case in fc.coords else picked


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


def aligned(forecast, truth, name: str, member_dim: str = "member"):
    """``(forecast[name], truth[name])`` on the same points: the truth picked per case
    (:func:`_truth_by_case`) and at the forecast's coordinates, with the truth's own coordinates
    (e.g. ``forecast_period``) dropped. Dims that still differ are refused, naming both sets (a
    length-1 truth dim becomes a scalar and is dropped)."""
    fc = forecast[name]
    ob = _select_truth(fc, _truth_by_case(fc, truth[name], name), name)
    if member_dim in ob.dims:
        raise ValueError(f"TRUTH variable {name!r} has the member dimension {member_dim!r}")
    ob = ob.squeeze([d for d in ob.dims if d not in fc.dims and ob.sizes[d] == 1], drop=True)
    extra = [str(d) for d in ob.dims if d not in fc.dims]
    lacking = [str(d) for d in fc.dims if d != member_dim and d not in ob.dims]
    if extra or lacking:
        raise ValueError(f"variable {name!r}: TRUTH dims {tuple(map(str, ob.dims))} and FORECAST dims "
                         f"{tuple(map(str, fc.dims))} differ (only in TRUTH: {extra}, only in FORECAST: {lacking}); "
                         f"rename dims to match, or give a FORECAST 'case' dim coordinates naming TRUTH dims "
                         f"as `sciffusion sample` writes them (e.g. init_time, target_lead_time)")
    return fc, ob.drop_vars([c for c in ob.coords if c not in ob.dims])


def _masked(fc, ob, member_dim: str):
    """Points where any member or the truth is NaN are left out of every score: the forecast is
    filled there (so no statistic divides by an empty count) and the truth set to NaN."""
    valid = fc.notnull().all(member_dim) & ob.notnull()
    return fc.where(valid, 0), ob.where(valid)


def _missing(fc, ob, member_dim: str):
    """Lazy counts of missing data: ``member_nan`` per member, ``truth_valid``, ``forecast_valid``,
    ``mixed`` (points with NaN in the truth or some members but not all: not a common land mask)."""
    import xarray as xr

    fnan = fc.isnull()
    nan_count = fnan.sum(member_dim) + ob.isnull()
    mixed = ((nan_count > 0) & (nan_count < fc.sizes[member_dim] + 1)).sum()
    return xr.Dataset({"member_nan": fnan.sum([d for d in fc.dims if d != member_dim]),
                       "truth_valid": ob.count(), "forecast_valid": fc.count(), "mixed": mixed})


def _lat_dim(da):
    return next((d for d in ("lat", "latitude") if d in da.dims and d in da.coords), None)


def _names(forecast, truth, member_dim, variables):
    names = variables or [v for v in forecast.data_vars if member_dim in forecast[v].dims]
    if not names:
        dims = sorted({str(d) for v in forecast.data_vars.values() for d in v.dims})
        raise ValueError(f"no variable in FORECAST has the member dimension {member_dim!r} "
                         f"(its dims are {dims}); use --member-dim")
    for name in names:
        if name not in forecast.data_vars:
            raise KeyError(f"variable {name!r} not in FORECAST (has {list(forecast.data_vars)})")
        if name not in truth.data_vars:
            raise KeyError(f"variable {name!r} is in FORECAST but missing from TRUTH "
                           f"(TRUTH has {list(truth.data_vars)})")
        if member_dim not in forecast[name].dims:
            raise ValueError(f"variable {name!r} has no member dimension {member_dim!r} "
                             f"(dims {tuple(forecast[name].dims)}); use --member-dim")
    return names


def score_dataset(forecast, truth, *, member_dim="member", reduce=None, fair=False,
                  weights="area", variables=None):
    """Score every variable of ``forecast`` with ``member_dim``; returns ``{var: Dataset}`` (lazy).

    The truth is aligned by :func:`aligned`; points where any member or the truth is NaN are
    left out of every score (a land mask costs nothing)."""
    names = _names(forecast, truth, member_dim, variables)
    return {name: _score(*aligned(forecast, truth, name, member_dim), name, member_dim=member_dim,
                         reduce=reduce, fair=fair, weights=weights) for name in names}


def reduced_dims(fc, member_dim, reduce) -> list:
    """The dims ``--reduce`` averages over: all but the first of ``fc``'s (without ``member_dim``) by default."""
    dims = [d for d in fc.dims if d != member_dim]
    return dims[1:] if reduce is None else list(reduce)


def metrics(fc, ob, rdims, *, member_dim, fair, weights):
    """CRPS, the spread-skill components (``spread``, ``skill``, ``ratio``) and the bias of ``fc``
    against ``ob`` averaged over ``rdims``, latitude-weighted (``weights``) when the latitude is averaged."""
    import sciffusion.metrics as sm

    lat = _lat_dim(fc)
    w = sm.latitude_weights(fc[lat], kind=weights) if weights != "none" and lat in rdims else None
    kw = dict(member_dim=member_dim, reduce_dims=rdims or None, weights=w)
    crps = sm.crps_ensemble(fc, ob, fair=fair, **kw)
    return crps, sm.spread_skill_ratio(fc, ob, components=True, **kw), sm.bias(fc, ob, **kw)


def _score(fc, ob, name, *, member_dim, reduce, fair, weights):
    rdims, dims = reduced_dims(fc, member_dim, reduce), [d for d in fc.dims if d != member_dim]
    missing = [d for d in rdims if d not in dims]
    if missing:
        raise ValueError(f"variable {name!r}: --reduce dims {missing} not in its dims {dims}")
    crps, comp, bias = metrics(*_masked(fc, ob, member_dim), rdims, member_dim=member_dim, fair=fair, weights=weights)
    return _dataset(fc.attrs, name, crps=crps, rmse=comp["skill"], bias=bias, spread=comp["spread"],
                    spread_skill_ratio=comp["ratio"])


def frame(ds, **first):
    """``ds`` as a DataFrame (one row when it has no dims) with the columns ``first`` in front."""
    import pandas as pd

    df = ds.to_dataframe().reset_index() if ds.sizes else pd.DataFrame({k: [float(v)] for k, v in ds.data_vars.items()})
    for k, v in reversed(first.items()):
        df.insert(0, k, v)
    return df


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


def run(args) -> int:
    from sciffusion.commands._common import refuse_overlap

    inputs = {"FORECAST": args.forecast, "TRUTH": args.truth}
    refuse_overlap(args.out, "--out", inputs | ({"B": args.compare} if getattr(args, "compare", None) else {}))
    scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
    if scheduler is None and workers is None:
        return _run(args)
    from sciffusion.commands._common import UserError
    from sciffusion.distributed import SchedulerUnreachable, dask_client

    try:
        with dask_client(scheduler, workers, memory_limit=args.memory_limit) as client:
            print(f"computing on the dask cluster at {client.scheduler.address} ({len(client.nthreads())} workers)")
            return _run(args)  # dask computes on the client's cluster while it is open
    except SchedulerUnreachable as exc:
        raise UserError(str(exc)) from exc


def _compute(pairs, args, other=None):
    """Scores (the Dataset written to scores.nc, and per variable), missing-data counts of every
    variable and the per-time series of the intervals or of the comparison with ``other``
    (:func:`~sciffusion.commands._score_report.series`, with its dims and notes), in one pass."""
    import xarray as xr

    from sciffusion.commands._score_report import series

    extra, dims, notes = series(pairs, args, other)
    kw = dict(member_dim=args.member_dim, reduce=args.reduce, fair=args.fair, weights=args.weights)
    lazy = dict(extra)
    for name, (fc, ob) in pairs.items():
        lazy.update({(name, "score", k): v for k, v in _score(fc, ob, name, **kw).data_vars.items()})
        lazy.update({(name, "count", k): v for k, v in _missing(fc, ob, args.member_dim).data_vars.items()})
    done = xr.Dataset(lazy).compute()  # (dask.compute of several xarray objects trips a dask bug)
    part = {kind: {name: xr.Dataset({key[2]: done[key] for key in lazy if key[:2] == (name, kind)})
                   for name in pairs} for kind in ("score", "count")}
    merged = xr.Dataset({f"{name}_{k}": v for name, ds in part["score"].items() for k, v in ds.data_vars.items()})
    return merged, part["score"], part["count"], {key: done[key] for key in extra}, dims, notes


def _empty_members(pairs, counts, args) -> dict:
    """Refuse empty variables; ``{name: members entirely NaN}`` (refused unless --allow-missing)."""
    from sciffusion.commands._common import UserError

    empty = {}
    for name, (fc, ob) in pairs.items():
        c = counts[name]
        for role, n in (("TRUTH", int(c["truth_valid"])), ("FORECAST", int(c["forecast_valid"]))):
            if n == 0:
                raise UserError(f"{role} variable {name!r} is entirely NaN (100% missing); nothing to score")
        per_member = fc.size // fc.sizes[args.member_dim]
        gone = c["member_nan"].values == per_member
        labels = fc[args.member_dim].values[gone].tolist()  # (a dim without coordinate reads 0..M-1)
        if gone.any() and not args.allow_missing:
            raise UserError(f"FORECAST variable {name!r} has {gone.sum()} of {gone.size} members entirely NaN "
                            f"({args.member_dim} {labels}): an unfinished `sciffusion sample` store? finish it "
                            f"with `sciffusion sample ... --resume`, or score the others with --allow-missing")
        if gone.any():
            empty[name] = (~gone, labels)
    return empty


def _run(args) -> int:
    import pandas as pd

    from sciffusion.commands import _score_report as report

    forecast, truth = _open(args.forecast, "FORECAST", args.member_dim), _open(args.truth, "TRUTH")
    names = _names(forecast, truth, args.member_dim, args.variables)
    pairs = {name: aligned(forecast, truth, name, args.member_dim) for name in names}
    other = report.compare_pairs(args, truth, names) if args.compare else None
    merged, scores, counts, done, dims, notes = _compute(pairs, args, other)
    empty = _empty_members(pairs, counts, args)
    if empty:  # --allow-missing: score again without the empty members
        for name, (keep, labels) in empty.items():
            fc, ob = pairs[name]
            pairs[name] = (fc.isel({args.member_dim: keep}), ob)
            print(f"sciffusion score: warning: {name!r}: scoring without the {len(labels)} members that are "
                  f"entirely NaN ({args.member_dim} {labels})", file=sys.stderr)
        merged, scores, counts, done, dims, notes = _compute(pairs, args, other)
    for name, (fc, ob) in pairs.items():
        if int(counts[name]["mixed"]):
            frac = int(counts[name]["mixed"]) / ob.size
            print(f"sciffusion score: warning: {name!r}: {frac:.1%} of points have NaN in the truth or in some "
                  f"members but not all; they are left out of the scores", file=sys.stderr)
    comparison = None
    if other is None:
        intervals, more = report.intervals(done, dims, scores, args)
        for name, iv in intervals.items():
            scores[name] = report.with_intervals(scores[name], iv)
            merged.update({f"{name}_{k}": v for k, v in iv.data_vars.items()})
    else:
        comparison, more = report.compare(done, dims, args)
    table = pd.concat([frame(ds, variable=name) for name, ds in scores.items()], ignore_index=True)
    with pd.option_context("display.max_rows", 40, "display.width", 160):
        for t in (table, comparison):
            if t is not None:
                print(t.to_string(index=False, float_format=lambda v: f"{v:.4g}", max_rows=40))
    if notes + more:
        print("\n".join(notes + more))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        merged.attrs.update(forecast=str(args.forecast), truth=str(args.truth), fair_crps=int(args.fair),
                            member_dim=args.member_dim)
        merged.to_netcdf(out / "scores.nc")
        table.to_csv(out / "scores.csv", index=False)
        if comparison is not None:
            comparison.to_csv(out / "compare.csv", index=False)
        if not args.no_plots:
            report.plots(pairs, scores, args.member_dim, out)
        print(f"wrote {out / 'scores.nc'}, {out / 'scores.csv'}" + (", compare.csv" if comparison is not None else "")
              + ("" if args.no_plots else " and plots"))
    return 0
