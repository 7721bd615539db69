"""``sciffusion assimilate CONFIG.toml``: a twin experiment (truth, observations, cycled filter) to zarr.

The config names the system, the truth run, the observations and the filter (see
``docs/assimilation.md`` for a sample). The truth and its observations are simulated with the
system itself; :func:`sciffusion.assimilate.assimilate` runs the filter and writes the analysis
ensemble, the forecast mean and spread, the truth and the observations; the per-cycle scores are
summarised on the terminal (and drawn with ``--figure``). ``[filter] prior = "PATH"`` analyses with a
trained prior ``x | forecast`` saved by :meth:`sciffusion.assimilate.ForecastPrior.save` (the path as
given, relative to the working directory) instead of the forecast ensemble's prior.

Examples::

    sciffusion assimilate l96.toml -o l96_da.zarr
    sciffusion assimilate l96.toml -o l96_da.zarr --resume --figure scores.png
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from sciffusion.commands._common import UserError, add_resume_arguments, write_mode

if TYPE_CHECKING:  # the command imports torch only when it runs
    import torch

NAME = "assimilate"
HELP = "run a cycled data-assimilation twin experiment from a TOML config to zarr"

SYSTEMS = ("lorenz96", "kolmogorov")
KEYS = {
    "": ("seed", "system", "truth", "observations", "filter", "domains"),
    "system": ("name", "k", "forcing", "dt", "noise_std", "n", "reynolds"),
    "truth": ("spinup", "seed"),
    "observations": ("operator", "every", "fraction", "function", "noise_std", "interval", "cycles", "seed"),
    "filter": ("members", "perturbation", "bandwidth", "inflation", "localization_radius", "localization_metric",
               "steps", "cg_iters",
               "guidance", "start", "sigma_max", "cycles_per_block", "prior", "rtps", "rtpp", "lag", "mda",
               "mda_inflation"),
    "domains": ("radius", "block", "obs_radius", "taper_radius", "space", "enkf_n", "rotate"),
}
OPERATORS = ("all", "every", "fraction")
FUNCTIONS = ("identity", "arctan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG",
                        help="TOML file: [system], [truth], [observations], [filter], optional [domains], seed")
    parser.add_argument("-o", "--output", required=True, help="output zarr store (path)")
    parser.add_argument("--burn", type=int, default=0, help="cycles left out of the printed score means; default 0")
    parser.add_argument("--figure", help="save the RMSE/spread and rank-histogram figure to this file")
    add_resume_arguments(parser, "continue an interrupted run at its first unwritten cycle")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_keys(table: dict, name: str) -> None:
    unknown = sorted(set(table) - set(KEYS[name]))
    if unknown:
        where = f"config [{name}]" if name else "config (top level)"
        raise UserError(f"{where} has unknown key(s) {unknown}; valid keys: {sorted(KEYS[name])}")


def read_config(path: str) -> dict:
    """The config as a dict of tables, every key checked (``[domains]`` stays absent when not given)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    _check_keys(cfg, "")
    for name in KEYS:
        if name and (name != "domains" or name in cfg):
            table = cfg.setdefault(name, {})
            if not isinstance(table, dict):
                raise UserError(f"config [{name}] must be a table, got {table!r}")
            _check_keys(table, name)
    return cfg


def build_system(spec: dict):
    from sciffusion import systems

    spec = dict(spec)
    name = spec.pop("name", "lorenz96")
    if name not in SYSTEMS:
        raise UserError(f"config [system] name must be one of {list(SYSTEMS)}, got {name!r}")
    if name == "lorenz96":
        bad = set(spec) - {"k", "forcing", "dt", "noise_std"}
        model = systems.Lorenz96
    else:
        bad = set(spec) - {"n", "reynolds", "dt"}
        model = systems.KolmogorovFlow
    if bad:
        raise UserError(f"config [system] key(s) {sorted(bad)} do not apply to {name}")
    return model(**spec)


def build_operator(spec: dict, state_shape: tuple[int, ...]):
    """A ``Mask`` over the flattened state (every k-th entry, a random fraction, or all), optionally
    followed by ``arctan``: ``(B, *state) -> (B, n_observed)``."""
    import torch

    from sciffusion.inverse import Mask

    kind, size = spec.get("operator", "all"), int(torch.Size(state_shape).numel())
    if kind not in OPERATORS:
        raise UserError(f"config [observations] operator must be one of {list(OPERATORS)}, got {kind!r}")
    for key in ("every", "fraction"):
        if key in spec and kind != key:
            raise UserError(f"config [observations] {key} applies to operator = {key!r} only, not {kind!r}")
    mask = torch.zeros(size, dtype=torch.bool)
    if kind == "all":
        mask[:] = True
    elif kind == "every":
        every = spec.get("every", 2)
        if not isinstance(every, int) or every < 1:
            raise UserError(f"config [observations] every must be an integer >= 1, got {every!r}")
        mask[::every] = True
    else:
        fraction = float(spec.get("fraction", 0.5))
        if not 0 < fraction <= 1:
            raise UserError(f"config [observations] fraction must be in (0, 1], got {fraction}")
        g = torch.Generator().manual_seed(int(spec.get("seed", 0)))
        mask[torch.randperm(size, generator=g)[: max(1, round(fraction * size))]] = True
    mask = Mask(mask.reshape(state_shape))
    function = spec.get("function", "identity")
    if function not in FUNCTIONS:
        raise UserError(f"config [observations] function must be one of {list(FUNCTIONS)}, got {function!r}")
    if function == "identity":
        return mask

    def arctan(x):
        return torch.atan(mask(x))

    arctan.mask_operator = mask  # the observed entries, for [domains]
    return arctan


def observed_index(operator) -> torch.Tensor:
    """Flat state index of each observation of an operator made by :func:`build_operator`."""
    mask = getattr(operator, "mask_operator", operator)
    return mask.mask.reshape(-1).nonzero().flatten()


def ring_only(model, key: str) -> None:
    if model.name != "lorenz96" or getattr(model, "j", 0):
        raise UserError(f"config {key} applies to the one-level lorenz96 system only")


def build_domains(spec: dict, model, operator):
    """:func:`~sciffusion.assimilate.periodic_domains` on Lorenz-96's ring from the ``[domains]`` table
    and the observed entries of ``operator``; with it the filter runs ``local_analysis``."""
    from sciffusion.assimilate import periodic_domains

    ring_only(model, "[domains]")
    if "radius" not in spec:
        raise UserError("config [domains] needs 'radius' (halo points on each side of a block)")
    try:
        return periodic_domains(model.k, observed_index(operator), radius=spec["radius"], block=spec.get("block", 1),
                                obs_radius=spec.get("obs_radius"), taper_radius=spec.get("taper_radius"))
    except ValueError as exc:
        raise UserError(f"config [domains]: {exc}") from None


def localization(model, radius, metric="arc"):
    """Gaspari-Cohn taper on Lorenz-96's periodic ring (``metric``: the ring's ``"arc"`` or ``"chord"`` distance;
    a warning where the arc taper is no correlation matrix, which a cycle may then refuse)."""
    import warnings

    import torch

    from sciffusion.assimilate import ring_taper

    ring_only(model, "[filter] localization_radius")
    try:
        taper = ring_taper(model.k, float(radius), metric=metric)
    except ValueError as exc:
        raise UserError(f"config [filter] localization: {exc}") from None
    low = float(torch.linalg.eigvalsh(taper).min())
    if low < -1e-9:
        warnings.warn(f"config [filter] localization_radius = {radius}: the Gaspari-Cohn taper of the arc distance "
                      f"on a ring of {model.k} is not positive semi-definite (smallest eigenvalue {low:.3g}), so a "
                      f"tapered covariance may have its negative eigenvalues clipped; localization_metric = \"chord\" "
                      f"is valid at every radius", stacklevel=2)
    return taper


def filter_prior(path, filt: dict, cfg: dict, model) -> str:
    """The path of ``[filter] prior``, after loading it once (UserError naming the key and the path when it
    cannot be) and refusing the ensemble prior's keys and ``[domains]`` with it."""
    from sciffusion.assimilate import ForecastPrior

    if not isinstance(path, str) or not path:
        raise UserError(f"config [filter] prior must be the path of a saved forecast prior, got {path!r}")
    ensemble_only = sorted({"bandwidth", "inflation", "localization_radius", "start"} & set(filt))
    if ensemble_only:
        raise UserError(f"config [filter] {ensemble_only} set the forecast ensemble's prior; "
                        "leave them out with [filter] prior (a trained prior replaces it)")
    if "domains" in cfg:
        raise UserError("config [filter] prior and [domains] exclude each other: the trained prior analyses "
                        "the whole state")
    try:
        ForecastPrior.load(path, device=model.device)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UserError(f"config [filter] prior = {path!r} cannot be loaded: {exc}") from None
    return path


def run(args: argparse.Namespace) -> int:
    cfg = read_config(args.config)
    if args.burn < 0:
        raise UserError(f"--burn must be >= 0, got {args.burn}")

    import torch

    from sciffusion.assimilate import assimilate, cycle_scores, plot_cycle_scores, summary, truth_and_observations

    model = build_system(cfg["system"])
    obs_cfg, filt = cfg["observations"], dict(cfg["filter"])
    seed = int(cfg.get("seed", 0))
    shape = tuple(model.initial_state(1, torch.Generator().manual_seed(0)).shape[1:])
    op = build_operator(obs_cfg, shape)
    for key in ("noise_std", "interval", "cycles"):
        if key not in obs_cfg:
            raise UserError(f"config [observations] needs {key!r}")
    cycles, noise = obs_cfg["cycles"], float(obs_cfg["noise_std"])
    if not isinstance(cycles, int) or cycles < 1:
        raise UserError(f"config [observations] cycles must be an integer >= 1, got {cycles!r}")
    initial, obs, truth = truth_and_observations(model, op, n_cycles=cycles, interval=float(obs_cfg["interval"]),
                                                 noise_std=noise, spinup=float(cfg["truth"].get("spinup", 10.0)),
                                                 seed=int(cfg["truth"].get("seed", seed)))
    members = filt.pop("members", 20)
    perturbation = float(filt.pop("perturbation", 1.0))
    block = filt.pop("cycles_per_block", 10)
    if "lag" in filt:  # the four-dimensional analysis over the last `lag` observation times
        lag = filt["lag"]
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
            raise UserError(f"config [filter] lag must be an integer >= 1, got {lag!r}")
        if lag > 1 and ("domains" in cfg or "prior" in filt):
            raise UserError(f"config [filter] lag = {lag} runs the global analysis over a window: it does not go "
                            f"with {'[domains]' if 'domains' in cfg else '[filter] prior'}")
    if "mda" in filt or "mda_inflation" in filt:  # multiple data assimilation over the lag windows
        if not isinstance(filt.get("mda", False), bool):
            raise UserError(f"config [filter] mda must be true or false, got {filt['mda']!r}")
        if "mda_inflation" in filt and not filt.get("mda"):
            raise UserError("config [filter] mda_inflation is the inflation of the mda chain: it needs mda = true")
        if filt.get("mda") and filt.get("lag", 1) < 2:
            raise UserError(f"config [filter] mda = true assimilates each observation over the lag windows that "
                            f"hold it: it needs lag >= 2, got lag = {filt.get('lag', 1)}")
    if "prior" in filt:  # checked here for an error naming the key; assimilate loads it and records the path
        filt["prior"] = filter_prior(filt["prior"], filt, cfg, model)
    radius = filt.pop("localization_radius", None)
    metric = filt.pop("localization_metric", "arc")
    if metric != "arc" and radius is None:
        raise UserError("config [filter] localization_metric needs localization_radius")
    if radius is not None:
        if "domains" in cfg:
            raise UserError("config [filter] localization_radius and [domains] exclude each other: the domains "
                            "localise by their windows (use [domains] taper_radius for a taper within them)")
        filt["localization"] = localization(model, radius, metric)
    if "domains" in cfg:
        filt["domains"] = build_domains(cfg["domains"], model, op)
        filt["function"] = torch.atan if obs_cfg.get("function", "identity") == "arctan" else None
        if "space" in cfg["domains"]:  # absent: local_analysis's default, and the provenance of older stores
            space = cfg["domains"]["space"]
            if space not in ("state", "ensemble"):
                raise UserError(f"config [domains] space must be 'state' or 'ensemble', got {space!r}")
            if space == "ensemble" and "taper_radius" in cfg["domains"]:
                raise UserError("config [domains] space = 'ensemble' cannot apply taper_radius (a covariance taper "
                                "has no ensemble-space form)")
            filt["space"] = space
        if "enkf_n" in cfg["domains"]:  # adaptive EnKF-N inflation per domain, in either space
            filt["enkf_n"] = float(cfg["domains"]["enkf_n"])
        if "rotate" in cfg["domains"]:  # absent: no rotation, and the provenance of older stores
            if not isinstance(cfg["domains"]["rotate"], bool):
                raise UserError(f"config [domains] rotate must be true or false, got {cfg['domains']['rotate']!r}")
            filt["rotate"] = cfg["domains"]["rotate"]
    if filt.get("guidance") == "exact" and not (filt.get("space") == "ensemble" and filt.get("function") is None):
        raise UserError("config [filter] guidance = 'exact' is the closed-form posterior of [domains] space = "
                        "'ensemble' with linear observations (no [observations] function); use a guidance method "
                        "such as 'mmps' otherwise")
    ds = assimilate(model, initial, obs, operator=op, noise_std=noise, n_members=members, perturbation=perturbation,
                    seed=seed, truth=truth, out=args.output, mode=write_mode(args), cycles_per_block=block,
                    progress=not args.no_progress, **filt)
    names = list(model.variables())
    scores = cycle_scores(ds[f"{names[0]}_analysis"], ds[f"{names[0]}_truth"])
    means = summary(scores, burn=min(args.burn, cycles - 1))
    sizes = ", ".join(f"{k}={v}" for k, v in ds.sizes.items())
    print(f"wrote {model.name} assimilation to {args.output} ({sizes})")
    print(f"{names[0]} analysis after {min(args.burn, cycles - 1)} burn-in cycles: "
          + ", ".join(f"{k} {v:.4g}" for k, v in means.items())
          + f"; analysis {float(ds.analysis_seconds.mean()):.3g} s/cycle")
    if args.figure:
        plot_cycle_scores(scores, title=f"{model.name}: analysis RMSE and spread").savefig(args.figure, dpi=100)
        print(f"figure: {args.figure}")
    return 0
