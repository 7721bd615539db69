"""SEEDS-style ensemble emulation: a conditional EDM model of p(member | K seeds, lead time).

Li et al. (2024, Science Advances, "Generative emulation of weather forecast ensembles with
diffusion models"): a diffusion model conditioned on a few members of a physics ensemble (the
*seeds*) draws as many further members as wanted. Two modes:

* ``"emulation"``: targets are other members of the same physics ensemble, so generated members
  are exchangeable with the physics members (same spread, same biases as the forecast model);
* ``"post-processing"``: targets are the truth (reanalysis) with probability ``truth_fraction``
  and other members otherwise, so the generated ensemble corrects the forecast model's bias and
  spread towards the truth.

The spread knob is the **noise temperature** ``tau``: the sampler starts from ``tau * sigma_max *
eps`` instead of ``sigma_max * eps``. For a Gaussian conditional law the probability-flow ODE is
linear and the generated deviations from the conditional mean are exactly ``tau`` times the learned
ones; in general the spread grows monotonically with ``tau``. :func:`~sciffusion.emulators.calibrate_spread`
picks ``tau`` (or the EDM churn, or the step count) on a validation set so that the
spread-skill ratio is 1. See ``docs/emulation.md``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import xarray as xr

from sciffusion._deprecate import renamed_keywords
from sciffusion.data.batches import BatchDataset
from sciffusion.diffusion import Denoiser
from sciffusion.diffusion.sample import (check_sample_options, forward_step, step_function, step_keywords, step_name,
                                         step_options)
from sciffusion.diffusion.schedules import SIGMA_MAX
from sciffusion.diffusion.streams import check_rng
from sciffusion.emulators.base import Emulator
from sciffusion.emulators.members import generate as generate_members
from sciffusion.emulators.seeds_data import MODES, SeedPairs, SeedsCoder, _names, check_finite, ensemble_tensor
from sciffusion.emulators.store import ensemble_output

EOF_MEMORY_LIMIT = 16 * 2**30  # bytes the EOF fit of a latent (EOFMLP) emulator may take
# Heun 12 (23 denoiser calls): few-step Heun inflates the spread (8 steps: 1.27x, 18: 1.02x with the
# exact Gaussian denoiser, docs/emulation.md), and the temperature calibrated after training corrects the rest
DEFAULT_SAMPLER = {"method": "heun", "steps": 12, "temperature": 1.0}


class TemperedStep:
    """A sampler step that scales the starting noise by ``temperature`` (at the first level of the
    schedule, whatever ``sigma_max``).

    Wraps any step function of :mod:`sciffusion.diffusion.sample` (same signature, same options),
    so every sampler gets the temperature knob; ``temperature=1`` is the plain sampler. It reads
    the schedule from the ``sigmas`` keyword that :func:`sciffusion.diffusion.sample` supplies.
    """

    def __init__(self, step, temperature: float = 1.0):
        self.step = step_function(step)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        inner = step_keywords(self.step)
        self.sampler_keywords = None if inner is None else (*inner, *(("sigmas",) if "sigmas" not in inner else ()))
        self.__name__ = step_name(step)

    def __call__(self, denoiser, x, sigma, sigma_next, *, sigmas: torch.Tensor, **kwargs):
        if self.temperature != 1.0 and float(sigma) == float(sigmas[0]):
            x = x * self.temperature
        return forward_step(self.step, denoiser, x, sigma, sigma_next, sigmas=sigmas, **kwargs)


def check_centred_temperature(options: dict, temperature: float) -> None:
    """TemperedStep scales the state at the first level, which a centred start has already shifted to
    the data's mean: the mean would be scaled too. Refuse the pair (``sample(temperature=)`` scales the
    draw before the centring; a Rollout uses that)."""
    if options.get("start", "noise") == "centred" and float(temperature) != 1.0:
        raise ValueError(f"temperature {temperature} with start='centred' would scale the centred mean too; "
                         "use start='noise' with a temperature, or temperature 1 with the centred start")


def _default_net(coder: SeedsCoder, net: dict | None) -> dict:
    from sciffusion.nets import task_spec

    c_in, c_cond = coder.channels, coder.cond_channels
    io = {"in_channels": c_in, "cond_channels": c_cond}
    nets = {"EOFMLP": ({"rank": 128, "cond_rank": 128, "width": 512, "depth": 4},  # latent diffusion on EOFs, any grid
                       {"in_channels": c_in, "grid_shape": list(coder.grid_shape), "cond_channels": c_cond}),
            "PeriodicConv1d": ({"width": 32, "n_blocks": 4}, io),
            "UNet2d": ({"channels": [32, 64], "blocks_per_level": 1, "padding": "circular", "attention_levels": []}, io)}
    return task_spec(net, {1: "PeriodicConv1d", 2: "UNet2d"}.get(len(coder.grid_dims), "MLP"), nets,
                     "an EnsembleEmulator (gridded conditions)",
                     "PeriodicConv1d (1-D grids), UNet2d (2-D) or EOFMLP (any grid, latent)")


def latent_net(denoiser):
    """The :class:`~sciffusion.nets.EOFMLP` inside ``denoiser`` (latent diffusion), or None."""
    from sciffusion.nets import EOFMLP, _unwrap

    net = getattr(denoiser, "net", None)
    net = _unwrap(net) if isinstance(net, torch.nn.Module) else None
    return net if isinstance(net, EOFMLP) else None


class LatentPairs(BatchDataset):
    """:class:`SeedPairs` with targets and conditions in EOF coefficients (for an EOFMLP denoiser)."""

    def __init__(self, pairs: SeedPairs, net):
        self.pairs, self.net = pairs, net

    def __len__(self) -> int:
        return len(self.pairs)

    @torch.no_grad()
    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.pairs.batch(idx)
        return {"x": self.net.encode(b["x"]), "cond": self.net.encode_cond(b["cond"])}


class EnsembleEmulator(Emulator):
    """Generate ensemble members from K seed members (see the module docstring).

    Build one with :meth:`fit` (trains on a physics ensemble) or :meth:`load` (a checkpoint), then
    call :meth:`generate`. ``sampler`` holds the default ``method``, ``steps`` and ``temperature``
    (set by calibration and stored with :meth:`save`).
    """

    key, label, emulator = "ensemble_emulator", "an ensemble emulator", "sciffusion.emulators.EnsembleEmulator"
    coder_class, spec_keys = SeedsCoder, ("mode", "truth_fraction", "seed_members")

    def __init__(self, denoiser, coder: SeedsCoder, *, mode: str = "emulation", truth_fraction: float = 0.0,
                 sampler: dict | None = None, seed_members=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.denoiser, self.coder, self.mode, self.truth_fraction = denoiser, coder, mode, float(truth_fraction)
        # the training's fixed seed positions (e.g. [0]: a control run), None: random seeds (provenance only)
        self.seed_members = None if seed_members is None else [int(m) for m in seed_members]
        self.sampler = {**DEFAULT_SAMPLER, **(sampler or {})}

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, ds: xr.Dataset, variables=None, *, grid_dims=None, n_seeds: int = 2, mode: str = "emulation",
            truth_fraction: float = 0.5, truth: xr.Dataset | None = None, lead_dim: str = "lead_time",
            member_dim: str = "member", climatology: bool = False, static=None, net: dict | None = None,
            steps: int = 2000, batch_size: int = 128, lr: float = 2e-3, warmup_steps: int = 100,
            ema_decay: float = 0.995, seed: int = 0, pairs_per_sample: int | None = None, eof_samples: int = 8192,
            out_dir: str | os.PathLike | None = None, device=None, progress: bool = True,
            checkpoint_every: int | None = None, threads: int | None = None, weights=None,
            seed_members=None) -> EnsembleEmulator:
        """Train on a physics ensemble ``ds`` with ``v (..., lead_time, member, *grid)``.

        Args:
            variables: state variables (default: every variable with a ``member`` dim).
            grid_dims: spatial dims (default: the dims after ``member``).
            n_seeds: K, the number of seed members conditioned on.
            seed_members: None (default): each training pair draws K random members as seeds and
                another as target (SEEDS: the members are exchangeable, and generation takes any K).
                K positions along ``member_dim``: always those members as seeds, the rest as targets;
                e.g. ``n_seeds=1, seed_members=[0]`` with an unperturbed control run placed first
                learns the perturbed members given the control, and generation then takes the control
                (docs/distillation.md, shallow water: a generator given random seeds cannot know the
                ensemble mean better than their mean).
            mode, truth_fraction: ``"emulation"`` or ``"post-processing"`` (targets are the truth
                with probability ``truth_fraction``). The truth is ``truth[v]`` or ``ds[f"{v}_truth"]``
                on the ensemble's dims without ``member`` (what :func:`sciffusion.systems.simulate` writes).
            climatology: add the per-grid-point climatological mean and std as conditions.
            static: names of static fields of ``ds`` (grid dims only) to condition on.
            net: backbone spec ``{"name", "kwargs"}`` (channel counts are filled in); default a
                PeriodicConv1d (1-D grid) or UNet2d (2-D). ``{"name": "EOFMLP", "kwargs": {"rank": r,
                "cond_rank": rc}}`` is latent diffusion on the ``r`` leading EOFs of the targets (and ``rc``
                of the condition), fitted on ``eof_samples`` training pairs: far cheaper per member.
            steps, batch_size, lr, warmup_steps, ema_decay, seed: training (see :class:`~sciffusion.training.Trainer`).
            out_dir: checkpoint directory for a resumable run (None: in memory).
            checkpoint_every: steps between checkpoints of a run with ``out_dir`` (default 10% of
                ``steps``, at most 500); a killed run resumes from the last one, bit for bit.
            threads: torch CPU threads while training (default: leave torch's setting).
            weights: per-grid-point weights of the loss: ``"cos"`` or ``"area"`` (latitude weights from
                the ``lat``/``latitude`` grid coordinate) or a DataArray over grid dims; normalised to
                mean 1 and stored with the emulator (:attr:`weights`). None (default): unweighted.
                Not with the latent (EOFMLP) backbone. See :mod:`sciffusion.emulators.weights`.

        The training data must be NaN-free (a ValueError names the variable otherwise).
        """
        from sciffusion.nets import build_net
        from sciffusion.training import seeded

        if isinstance(ds, xr.DataArray):
            ds = ds.to_dataset()
        variables = _names(variables) or [str(v) for v in ds.data_vars if member_dim in ds[v].dims and not str(v).endswith("_truth")]
        if not variables:
            raise ValueError(f"no variable of the training data has a {member_dim!r} dimension")
        dims = list(ds[variables[0]].dims)
        if member_dim not in dims:
            raise ValueError(f"variable {variables[0]!r} has no {member_dim!r} dimension: dims {tuple(dims)}")
        grid_dims = _names(grid_dims) or [str(d) for d in dims[dims.index(member_dim) + 1 :]]
        if lead_dim not in ds.coords:
            raise ValueError(f"the training data has no {lead_dim!r} coordinate; pass lead_dim=")
        sample_dims = [str(d) for d in dims if d != member_dim and d not in grid_dims]
        from sciffusion.emulators import weights as gw

        w = gw.resolve(weights, ds, grid_dims)
        coder = SeedsCoder.fit(ds, variables, grid_dims=grid_dims, n_seeds=n_seeds, lead_dim=lead_dim,
                               member_dim=member_dim, climatology=climatology, static=static,
                               seed_members=seed_members)
        coder.weights = gw.to_spec(w)
        members = ensemble_tensor(ds, variables, sample_dims, grid_dims, member_dim)
        check_finite(members, variables)
        lead = torch.from_numpy(_lead_per_sample(ds, coder, sample_dims))
        truth_t = None
        if mode == "post-processing":
            src = truth if truth is not None else ds
            names = {v: (v if truth is not None else f"{v}_truth") for v in variables}
            lacking = [n for n in names.values() if n not in src.data_vars]
            if lacking:
                raise ValueError(f"post-processing mode needs the truth: variable(s) {lacking} not found")
            tds = xr.Dataset({v: src[n] for v, n in names.items()})
            truth_t = ensemble_tensor(tds.broadcast_like(ds[variables[0]].isel({member_dim: 0}, drop=True)),
                                      variables, sample_dims, grid_dims, None)
            check_finite(truth_t, variables, "truth", axis=1)
        pairs = SeedPairs(coder, members, lead, truth=truth_t, mode=mode, truth_fraction=truth_fraction,
                          pairs_per_sample=pairs_per_sample, seed=seed, seed_members=seed_members)
        with seeded(seed):  # the caller's global RNG is left as it was
            den = Denoiser(build_net(_default_net(coder, net)), sigma_data=1.0)
            latent = latent_net(den)
            if latent is not None and w is not None:
                raise ValueError("weights= weights the grid-point loss; the EOFMLP backbone's loss is on EOF "
                                 "coefficients. Use the UNet2d backbone for a latitude-weighted loss (or no weights)")
            if latent is not None:  # EOFs of the targets and conditions, from a seeded subset of the pairs
                n_eof = min(int(eof_samples), len(pairs))
                size = int(np.prod(coder.grid_shape))
                need = n_eof * (coder.channels + coder.cond_channels) * size * 12  # float32 batch + float64 copy
                if need > EOF_MEMORY_LIMIT:
                    raise ValueError(f"EOFMLP: fitting the EOFs on eof_samples={n_eof} pairs of {coder.channels} + "
                                     f"{coder.cond_channels} channels on a {size}-point grid needs about "
                                     f"{need / 2**30:.1f} GiB (limit {EOF_MEMORY_LIMIT / 2**30:.0f} GiB); pass a smaller "
                                     "eof_samples= (it must stay above the rank) or use the UNet2d backbone on grids this large")
                pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:n_eof]
                b = pairs.batch(pick)
                latent.fit_eofs(b["x"], b["cond"], seed=seed)  # kept fractions: latent.explained, .cond_explained
                pairs = LatentPairs(pairs, latent)
            emu = cls(den, coder, mode=mode, truth_fraction=truth_fraction if mode != "emulation" else 0.0,
                      seed_members=seed_members)
            return emu._train_denoiser(pairs, steps, batch_size=batch_size, threads=threads, out_dir=out_dir, lr=lr,
                                       warmup_steps=warmup_steps, ema_decay=ema_decay, seed=seed,
                                       checkpoint_every=checkpoint_every, device=device, progress=progress)

    @property
    def weights(self) -> xr.DataArray | None:
        """The loss's grid-point weights (mean 1 over the grid; pass them to ``ensemble_skill`` to score
        the same way), or None for an unweighted emulator."""
        from sciffusion.emulators.weights import from_spec

        return from_spec(self.coder.weights, self.coder.grid_coords)

    # ------------------------------------------------------------------ generation
    def check(self, seeds: xr.Dataset) -> None:
        """Raise ValueError naming what differs (variables, grid, member count, lead times) from training."""
        self.coder.check(seeds.to_dataset() if isinstance(seeds, xr.DataArray) else seeds)

    @torch.no_grad()
    @renamed_keywords(store="out")
    def generate(self, seeds: xr.Dataset | xr.DataArray, n_members: int, *, steps: int | None = None,
                 method: str | None = None, temperature: float | None = None, batch_size: int = 256, seed: int = 0,
                 out: str | os.PathLike | None = None, member_chunk: int = 32, mode: str = "w-",
                 progress: bool = True, device=None, rng: str = "torch", **sampler_options) -> xr.Dataset:
        """Draw ``n_members`` members for every seed set in ``seeds``.

        Args:
            seeds: Dataset with the trained variables on ``(..., lead_time, member=K, *grid)``
                (any sample dims, e.g. ``init_time``; ``lead_time`` may be a scalar coordinate).
            n_members: ensemble size; member ``m`` of seed set ``i`` (flattened sample dims, C
                order) is drawn from the stream ``(seed, i, m)``, so it is the same whatever
                ``n_members``, ``batch_size`` or ``member_chunk``.
            steps, method, temperature: sampler settings (default ``self.sampler``); extra
                ``sampler_options`` (``churn``, ``eta``, ...) go to :func:`sciffusion.diffusion.sample`.
            device: where the network, the EOF decoding and the seeds' decoding run (default: CPU).
            rng: ``"torch"`` (default; a ``torch.Generator`` per member) or ``"philox"``: counter-based
                streams keyed alike (:func:`sciffusion.diffusion.sample.stream_generators`), a whole
                batch's noise in one pass - much cheaper for large batches on a GPU, other numbers
                (recorded in the ``sampler`` attribute; the default leaves it out).
            out: zarr path: members are written block by block (``member_chunk`` each) and a rerun
                with ``mode="resume"`` computes only the missing blocks; a store written with
                other settings is refused. ``mode="w"`` overwrites, ``"w-"`` (default) refuses.
                ``store=`` is a deprecated alias of ``out=``.
        Returns:
            Dataset ``v (*sample_dims, member, *grid)`` with member ids ``0..n_members-1``, the
            seeds' coordinates and CF attributes, and provenance in ``attrs``.
        """
        g = self._prepare(seeds, n_members, steps, method, temperature, rng, sampler_options, device)
        ds, c, settings, options, sample_dims = g["ds"], self.coder, g["settings"], g["options"], g["sample_dims"]
        seed_ids = ds[c.member_dim].values.tolist() if c.member_dim in ds.coords else list(range(c.n_seeds))
        # the seeds' descriptive attributes would now be false: the output is emulated, not simulated
        provenance = self.provenance(f"generate(n_members={n_members}, seed={seed})", source=ds.attrs,
                                     title=f"sciffusion emulated ensemble ({n_members} members from {c.n_seeds} seed "
                                           f"members, {self.mode})",
                                     emulator_mode=self.mode, truth_fraction=self.truth_fraction, n_seeds=c.n_seeds,
                                     seed_members=json.dumps(seed_ids),
                                     sampler=json.dumps({**settings, **options, **({} if rng == "torch" else {"rng": rng})},
                                                        sort_keys=True), seed=int(seed))
        sample_shape, event = g["sample_shape"], g["event"]

        def draw(block) -> np.ndarray:
            x = self._draw(g, block, seed=seed, batch_size=batch_size, progress=progress, device=device, rng=rng)
            x = x.cpu().numpy()  # (N, b, C, *grid)
            return x.reshape(*sample_shape, x.shape[1], *event)

        coords = {k: v for k, v in ds.coords.items() if c.member_dim not in v.dims}
        template = xr.Dataset({v: ([*sample_dims, *c.grid_dims], np.zeros([*sample_shape, *c.grid_shape], np.float32),
                                   dict(ds[v].attrs)) for v in c.variables}, coords=coords, attrs=dict(ds.attrs))
        return ensemble_output(out, template, int(n_members), draw, member_axis=len(sample_dims), attrs=provenance,
                               member_dim=c.member_dim, member_chunk=member_chunk, mode=mode)

    @torch.no_grad()
    def generate_tensor(self, seeds: xr.Dataset | xr.DataArray, n_members: int | list[int], *, steps: int | None = None,
                        method: str | None = None, temperature: float | None = None, batch_size: int = 256,
                        seed: int = 0, progress: bool = False, device=None, rng: str = "torch",
                        **sampler_options) -> torch.Tensor:
        """The members of :meth:`generate` as one tensor ``(*sample_shape, M, C, *grid)`` on ``device``.

        The same draws (member ``m`` of seed set ``i`` from the stream ``(seed, i, m)``; ``n_members`` may
        also be a list of member ids), decoded where the network runs and left there: no copy to host
        memory, no Dataset, no provenance. For pipelines that go on on the device (scoring, a forecast
        model, a filter) and for timing the generation itself. ``sample_shape`` is the seeds' sample dims
        (all dims but ``member`` and the grid, in their order); ``C`` the coder's variables in order.
        """
        ids = list(range(int(n_members))) if isinstance(n_members, int) else [int(m) for m in n_members]
        g = self._prepare(seeds, len(ids), steps, method, temperature, rng, sampler_options, device)
        x = self._draw(g, ids, seed=seed, batch_size=batch_size, progress=progress, device=device, rng=rng, keep=True)
        return x.reshape(*g["sample_shape"], len(ids), *g["event"])

    def _prepare(self, seeds, n_members, steps, method, temperature, rng, sampler_options, device) -> dict:
        """Checks, sampler settings and the condition (on ``device``) shared by :meth:`generate` and
        :meth:`generate_tensor`; every refusal happens here, before anything is drawn or written."""
        ds = seeds.to_dataset() if isinstance(seeds, xr.DataArray) else seeds
        self.check(ds)
        c = self.coder
        if int(n_members) < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        check_rng(rng)
        ds = ds[c.variables]
        sample_dims = [str(d) for d in ds[c.variables[0]].dims if d != c.member_dim and d not in c.grid_dims]
        seeds_t = ensemble_tensor(ds, c.variables, sample_dims, c.grid_dims, c.member_dim)
        lead = torch.from_numpy(_lead_per_sample(ds, c, sample_dims))
        latent = latent_net(self.denoiser)
        if device is not None and latent is not None:  # the condition and the decoding run where the network does;
            seeds_t, lead = seeds_t.to(device), lead.to(device)  # on the grid the full condition stays on the CPU
        cond = c.condition(seeds_t, lead)
        if latent is not None:
            cond = latent.encode_cond(cond)
            cond = cond if device is not None else cond.cpu()
        given = {"steps": steps, "method": method, "temperature": temperature}
        settings = {**self.sampler, **{k: v for k, v in given.items() if v is not None}}
        step_fn = TemperedStep(settings["method"], settings["temperature"])
        stored = {k: v for k, v in settings.items() if k not in DEFAULT_SAMPLER}
        if method is not None and method != self.sampler.get("method"):  # stored options belong to the stored method
            valid = step_options(step_function(method))
            stored = {k: v for k, v in stored.items() if valid is None or k in valid}
        options = {**stored, **sampler_options}
        check_centred_temperature(options, settings["temperature"])
        check_sample_options(step_fn, options)  # before the store is allocated
        return {"ds": ds, "sample_dims": sample_dims, "sample_shape": [ds.sizes[d] for d in sample_dims],
                "event": (c.channels, *c.grid_shape), "seeds": seeds_t, "lead": lead, "cond": cond, "latent": latent,
                "step_fn": step_fn, "options": options, "settings": {k: settings[k] for k in DEFAULT_SAMPLER}}

    def _draw(self, g: dict, block, *, seed, batch_size, progress, device, rng, keep: bool = False) -> torch.Tensor:
        """Members ``block`` of every seed set, decoded: ``(N, len(block), C, *grid)``, on ``device`` where the
        network is latent (the EOF basis lives there) or with ``keep``, else on the CPU."""
        latent, event = g["latent"], g["event"]
        z = generate_members(self.denoiser, g["cond"], block, event_shape=(latent.rank,) if latent else event,
                             seed=seed, batch_size=batch_size, steps=int(g["settings"]["steps"]), method=g["step_fn"],
                             progress=progress, device=device, sigma_max=SIGMA_MAX, rng=rng,
                             out_device=(device or "cpu") if keep else "cpu", **g["options"])
        if latent is not None:
            z = latent.decode(z.reshape(-1, latent.rank)).reshape(*z.shape[:2], *event)
        return self.coder.decode(z, g["seeds"].to(z.device), g["lead"].to(z.device))


def _lead_per_sample(ds: xr.Dataset, coder: SeedsCoder, sample_dims: list[str]) -> np.ndarray:
    """The trained lead index of every flattened sample (C order over ``sample_dims``)."""
    idx = coder.lead_index(ds[coder.lead_dim].values)
    shape = [ds.sizes[d] for d in sample_dims]
    if coder.lead_dim in sample_dims:
        axis = sample_dims.index(coder.lead_dim)
        view = [1] * len(shape)
        view[axis] = len(idx)
        return np.broadcast_to(idx.reshape(view), shape).reshape(-1).astype(np.int64)
    return np.full(int(np.prod(shape)) if shape else 1, int(idx[0]), dtype=np.int64)
