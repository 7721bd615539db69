"""What ``sciffusion score`` adds around its table: intervals, a comparison of two ensembles, plots.

Intervals: scores averaged over a time-like dim (``--bootstrap-dim``, by default the first of the
averaged dims named like time, ``init_time``, ``time``, ..., or holding dates, with at least
``MIN_TIMES`` values) get a circular block-bootstrap percentile interval
(:func:`sciffusion.metrics.uncertainty.block_bootstrap`): the per-time scores (averaged over the
other dims with the same weights) are resampled in blocks of consecutive times. CRPS and bias
are means; RMSE and spread are square roots of means (of the squared error of the ensemble mean
and of the corrected ensemble variance), so their intervals are the square roots of those
means' intervals. The spread-skill ratio gets none.

Comparison (``--compare B``): both ensembles are scored on the points where both and the truth
are valid; for CRPS and the ensemble-mean squared error (MSE) the table gives A, B, the
difference A - B with its paired block-bootstrap interval (the same blocks for both), the skill
``1 - A/B`` of A relative to B with its interval (the CRPSS for CRPS), and the Diebold-Mariano
p-value (HAC variance, Harvey-Leybourne-Newbold small-sample correction).
"""

from __future__ import annotations

from pathlib import Path

from sciffusion.commands.score import _lat_dim, _masked, frame, metrics, reduced_dims

TIME_NAMES = ("init_time", "time", "valid_time", "forecast_reference_time", "date", "day")
MIN_TIMES = 10
INTERVAL_SCORES = {"crps": "crps", "bias": "bias", "rmse": "mse", "spread": "var"}  # score -> series


def add_arguments(parser) -> None:
    parser.add_argument("--bootstrap-dim", default=None, metavar="DIM",
                        help="averaged dim to resample for the intervals (default: the first averaged dim named "
                             f"like time ({', '.join(TIME_NAMES[:3])}, ...) with >= {MIN_TIMES} values)")
    parser.add_argument("--confidence", type=float, default=0.9, help="interval confidence (default: 0.9)")
    parser.add_argument("--block-length", type=int, default=None, metavar="L",
                        help="bootstrap block length in steps of the dim (default: twice the Politis-White length)")
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--compare", default=None, metavar="B",
                        help="a second ensemble (zarr/netCDF) to compare FORECAST with: differences, CRPS skill "
                             "of FORECAST relative to B, Diebold-Mariano p-values")


def bootstrap_dim(fc, args):
    """The dim to resample for ``fc``'s intervals, or ``(None, why not)``."""
    rdims = reduced_dims(fc, args.member_dim, args.reduce)
    if args.bootstrap_dim is not None:
        if args.bootstrap_dim not in rdims:
            raise ValueError(f"--bootstrap-dim {args.bootstrap_dim!r} is not among the averaged dims {rdims}; "
                             f"add it to --reduce")
        return args.bootstrap_dim, ""
    for d in rdims:
        coord = fc[d] if d in fc.coords else None
        timelike = d in TIME_NAMES or (coord is not None and "lead" not in str(d) and (
            coord.dtype.kind == "M" or type(coord.values.flat[0]).__module__.startswith("cftime")))
        if timelike and fc.sizes[d] >= MIN_TIMES:
            return d, ""
        if timelike:
            return None, f"{d!r} has {fc.sizes[d]} values (fewer than {MIN_TIMES})"
    return None, f"no time-like dim among the averaged dims {rdims}"


def _per_time(fc, ob, args, bdim, kind):
    """Scores of ``fc`` per value of ``bdim``, averaged over the other reduced dims (lazy)."""
    other = [d for d in reduced_dims(fc, args.member_dim, args.reduce) if d != bdim]
    crps, comp, bias = metrics(fc, ob, other, member_dim=args.member_dim, fair=args.fair, weights=args.weights)
    out = {"crps": crps, "mse": comp["skill"] ** 2}
    if kind == "intervals":
        out.update(bias=bias, var=comp["spread"] ** 2)
    return out


def compare_pairs(args, truth, names):
    """``{name: (B[name], truth)}`` for ``--compare B``, aligned like FORECAST."""
    from sciffusion.commands.score import _open, aligned

    b = _open(args.compare, "B", args.member_dim)
    for name in names:
        if name not in b.data_vars:
            raise KeyError(f"variable {name!r} is in FORECAST but missing from B {args.compare!r} "
                           f"(B has {list(b.data_vars)})")
        if args.member_dim not in b[name].dims:
            raise ValueError(f"variable {name!r} of B has no member dimension {args.member_dim!r} "
                             f"(dims {tuple(b[name].dims)})")
    return {name: aligned(b, truth, name, args.member_dim) for name in names}


def series(pairs, args, compare_pairs=None):
    """Lazy per-time series ``{(name, "a"|"b", key): DataArray}`` for the intervals and the comparison,
    ``{name: bootstrap dim}`` and notes saying where there are no intervals and why."""
    lazy, dims, notes = {}, {}, []
    for name, (fc, ob) in pairs.items():
        bdim, why = bootstrap_dim(fc, args)
        if bdim is None:
            if compare_pairs is not None:
                raise ValueError(f"variable {name!r}: --compare needs a time-like dim to resample ({why}); "
                                 f"give --bootstrap-dim and average over it with --reduce")
            notes.append(f"no intervals for {name!r}: {why} (name one with --bootstrap-dim)")
            continue
        dims[name] = bdim
        if compare_pairs is None:
            lazy.update({(name, "a", k): v for k, v in _per_time(*_masked(fc, ob, args.member_dim), args, bdim,
                                                                  "intervals").items()})
            continue
        fb, _ = compare_pairs[name]
        from sciffusion.metrics._core import check_aligned

        check_aligned(fc.isel({args.member_dim: 0}), fb.isel({args.member_dim: 0}), ("FORECAST", "B"))
        valid = fc.notnull().all(args.member_dim) & fb.notnull().all(args.member_dim) & ob.notnull()
        for role, f in (("a", fc), ("b", fb)):
            per_time = _per_time(f.where(valid, 0), ob.where(valid), args, bdim, "compare")
            lazy.update({(name, role, k): v for k, v in per_time.items()})
    return lazy, dims, notes


def _block_length(args, values, n):
    from sciffusion.metrics.uncertainty import default_block_length

    return args.block_length if args.block_length is not None else default_block_length(values, n)


def intervals(done, dims, scores, args):
    """``{name: Dataset of <score>_lo, <score>_hi}`` from the computed per-time series, and notes."""
    import numpy as np
    import xarray as xr

    from sciffusion.metrics.uncertainty import block_bootstrap

    out, notes = {}, []
    for name, d in dims.items():
        s = {k: done[(name, "a", k)] for k in ("crps", "bias", "mse", "var")}
        length = _block_length(args, s["crps"].transpose(..., d).values, s["crps"].sizes[d])
        kw = dict(dim=d, block_length=length, n_resamples=args.n_resamples, confidence=args.confidence)
        ds = xr.Dataset(attrs={"block_length": length})
        for score, key in INTERVAL_SCORES.items():
            r, attrs = block_bootstrap(s[key], **kw), scores[name][score].attrs
            for end, k in (("lo", "lower"), ("hi", "upper")):
                ds[f"{score}_{end}"] = (np.sqrt(r[k]) if key in ("mse", "var") else r[k]).copy()
                ds[f"{score}_{end}"].attrs = dict(attrs, long_name=f"{k} end of the {args.confidence:.0%} interval "
                                                  f"of the {attrs.get('long_name', score)}")
        out[name] = ds
        notes.append(f"intervals: {args.confidence:.0%} circular block bootstrap of {name!r} along {d!r} "
                     f"({s['crps'].sizes[d]} values, blocks of {length}, {args.n_resamples} resamples)")
    return out, notes


def with_intervals(ds, iv):
    """``ds`` with ``<score>_lo``/``<score>_hi`` placed right after each score."""
    import xarray as xr

    order = [k for score in ds.data_vars for k in (score, f"{score}_lo", f"{score}_hi") if k in ds or k in iv]
    return xr.merge([ds, iv], combine_attrs="drop_conflicts")[order]


def compare(done, dims, args):
    """The comparison table (a DataFrame): per variable and score, A, B, their difference and the
    skill of A relative to B with intervals, and the Diebold-Mariano p-value; and notes."""
    import pandas as pd
    import xarray as xr

    from sciffusion.metrics.uncertainty import block_bootstrap, diebold_mariano

    frames, notes = [], []
    for name, d in dims.items():
        diff = (done[(name, "a", "crps")] - done[(name, "b", "crps")]).transpose(..., d)
        length = _block_length(args, diff.values, diff.sizes[d])
        kw = dict(dim=d, block_length=length, n_resamples=args.n_resamples, confidence=args.confidence)
        for score in ("crps", "mse"):
            a, b = done[(name, "a", score)], done[(name, "b", score)]
            dif = block_bootstrap(a, b, statistic="difference", **kw)
            skill = block_bootstrap(a, b, statistic="skill", **kw)
            dm = diebold_mariano(a, b, dim=d, harvey=True)
            table = xr.Dataset({"A": a.mean(d), "B": b.mean(d), "difference": dif.estimate,
                                "difference_lo": dif.lower, "difference_hi": dif.upper, "skill": skill.estimate,
                                "skill_lo": skill.lower, "skill_hi": skill.upper, "dm_statistic": dm.statistic,
                                "dm_p_value": dm.p_value})
            frames.append(frame(table, variable=name, score=score))
        notes.append(f"comparison of {name!r} (A: FORECAST, B: {args.compare}) along {d!r}: {diff.sizes[d]} "
                     f"values, blocks of {length}, {args.confidence:.0%} intervals; skill = 1 - A/B (the CRPSS "
                     f"for crps); dm_p_value: Diebold-Mariano, HLN-corrected, lag floor(n^(1/3))")
    return pd.concat(frames, ignore_index=True), notes


def _spectra(fc, ob, lat, lon):
    """Zonal spectra of truth and forecast (masked by :func:`_masked`) over the latitudes with data
    at every point (a spectrum of a row with gaps is undefined); when every latitude has gaps, the
    gaps are filled with their row's zonal mean. Returns the spectra and a note for the title."""
    import sciffusion.metrics as sm

    valid = ob.notnull()
    full = valid.all([d for d in ob.dims if d != lat]).values
    note = "" if full.all() else f" ({int(full.sum())} of {full.size} latitudes: those without gaps)"
    if full.any():
        fc, ob = fc.isel({lat: full}), ob.isel({lat: full})
    else:
        note = " (gaps filled with the zonal mean)"
        fc, ob = (x.fillna(x.sum(lon) / x.count(lon).where(lambda n: n > 0)) for x in (fc.where(valid), ob))
    return {k: sm.zonal_spectrum(x, lon_dim=lon, reduce_dims="all") for k, x in (("truth", ob), ("forecast", fc))}, note


def plots(pairs, scores, member_dim, out: Path):
    """Rank histogram, reliability, CRPS map, zonal spectrum and spread-skill PNGs per variable."""
    import sciffusion.metrics as sm
    from sciffusion import plot

    for name, (fc, ob) in pairs.items():
        fc, ob = _masked(fc, ob, member_dim)
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
            spectra, note = _spectra(fc, ob, lat, lon)
            figs["spectrum"] = plot.power_spectrum(spectra, title=name + note)
        s = scores[name]
        if s["spread"].ndim == 1 and s["spread"].size > 1:
            figs["spread_skill"] = plot.spread_skill(s["spread"], s["rmse"], title=name)
        for kind, fig in figs.items():
            fig.savefig(out / f"{name}_{kind}.png", dpi=100)
