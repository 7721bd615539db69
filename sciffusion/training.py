"""Trainer: AdamW with warm-up, gradient clipping, EMA, periodic atomic checkpoints, exact resume.

Resume is exact on CPU: a run killed (even with SIGKILL) after step k and resumed from its last
checkpoint reaches bit-for-bit the same weights at step n as an uninterrupted run. Everything
random is drawn from generators whose state is checkpointed: the loss noise comes from the
trainer's own generator, the data order is a permutation seeded by ``(seed, epoch)`` (so only
the epoch and the position in it are stored), and the global torch RNG (dropout) is saved too.

Under ``torchrun`` (a ``torch.distributed`` process group of N ranks) the same Trainer trains with
DDP: ``batch_size`` stays the *global* batch, each rank takes its contiguous slice of the batch the
single-process run would draw (same permutation, same loss noise for those rows), gradients are
averaged across ranks, and only rank 0 writes checkpoints and metrics. N-rank training therefore
follows single-process training on the concatenated batch to float tolerance, resumes exactly,
and can even resume with another N (the data order is global).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sciffusion import checkpoint as ckpt
from sciffusion.data.batches import TensorPairs, collate  # noqa: F401  (TensorPairs: public here)
from sciffusion.diffusion import Denoiser
from sciffusion.diffusion.accel import resolve as resolve_speed
from sciffusion.diffusion.loss import draw_noise, edm_loss
from sciffusion.distributed.ddp import DistributedContext, default_device
from sciffusion.nets import net_spec


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``torch.set_num_threads(threads)`` and restore the previous count after
    (None: leave it). On a shared machine one or two threads are often far faster than torch's default."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive number of threads, got {threads!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block with torch's global RNG seeded by ``torch.manual_seed(seed)`` (network
    initialisation, dropout) and give the caller back its own RNG state after (CPU and CUDA): a
    ``fit`` gives the same model for the same seed and leaves the caller's random stream alone."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def default_checkpoint_every(steps: int) -> int:
    """Checkpoint spacing when none is given: every 10% of the steps, at most every 500 steps."""
    return max(1, min(500, math.ceil(int(steps) / 10)))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(epoch),)).generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer:
    """Train an EDM :class:`~sciffusion.diffusion.Denoiser` on a dataset of ``{"x", "cond", "mask"}`` dicts
    (or any sciffusion backbone on any batches, with ``loss_fn``).

    Args:
        denoiser: the model (its ``net``, or with ``loss_fn`` the module itself, must be a sciffusion
            backbone, so it can be checkpointed).
        train_data: map-style dataset of dicts with ``"x"`` and optionally ``"cond"``, ``"mask"``.
        val_data: optional dataset for the validation loss (evaluated with a fixed noise seed).
        out_dir: run directory for checkpoints and ``metrics.jsonl``; None keeps everything in memory.
        batch_size, lr, weight_decay, betas: AdamW settings; the last partial batch of an epoch is dropped.
        warmup_steps: linear learning-rate warm-up.
        grad_clip: max global gradient norm (None to disable).
        ema_decay: EMA factor per step; sampling uses the EMA weights.
        p_mean, p_std, channel_weights: EDM loss settings (see :func:`~sciffusion.diffusion.edm_loss`).
        seed: makes the run reproducible (data order, noise, initialisation is the caller's).
        checkpoint_every: steps between checkpoints (also one at the end of :meth:`fit`); default
            :func:`default_checkpoint_every` of the steps given to :meth:`fit` (10%, at most 500).
        keep_last: number of step checkpoints kept (resuming falls back to an older one when the
            newest is damaged).
        val_every: steps between validation losses (default: at each checkpoint).
        mixed_precision: ``"auto"`` (bf16 autocast on CUDA, full precision on CPU), ``"bf16"``
            (bfloat16 autocast on any device), or None/``"fp32"`` (full precision).
        channels_last: train in channels-last memory format (can help convolutions on GPUs).
        compile: ``torch.compile`` the training forward pass (checkpoints keep the plain weights).
        residual, residual_weight: physics-informed loss term (PIDM) passed to
            :func:`~sciffusion.diffusion.edm_loss`; ``residual`` is a callable and is not stored.
        loss_fn: ``loss_fn(model, batch, generator) -> loss`` replaces the EDM loss (DYffusion's
            networks); ``generator`` is the trainer's checkpointed generator, so resume stays exact.
        config: extra JSON-able entries stored in every checkpoint's config (normaliser, data...).
        progress: show a tqdm bar with loss and samples/s (rank 0 only under DDP).
        resume: continue from the newest checkpoint in ``out_dir`` if there is one (a damaged one is
            skipped with a warning for the previous one; a checkpoint of another model is refused).

    In an initialised ``torch.distributed`` process group with more than one rank the model is
    wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (see the module docstring);
    ``batch_size`` must then be divisible by the world size.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        train_data,
        *,
        val_data=None,
        out_dir: str | os.PathLike | None = None,
        batch_size: int = 32,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        grad_clip: float | None = 1.0,
        ema_decay: float = 0.999,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        channel_weights: list[float] | None = None,
        seed: int = 0,
        checkpoint_every: int | None = None,
        keep_last: int = 3,
        val_every: int | None = None,
        val_batches: int = 4,
        mixed_precision: str | None = "auto",
        channels_last: bool = False,
        compile: bool = False,
        residual: Callable | None = None,
        residual_weight: float = 0.0,
        loss_fn: Callable | None = None,
        device: str | torch.device | None = None,
        config: dict | None = None,
        progress: bool = True,
        resume: bool = True,
    ):
        if len(train_data) < batch_size:
            raise ValueError(f"train_data has {len(train_data)} samples, fewer than batch_size={batch_size}")
        if mixed_precision not in (None, "fp32", "bf16", "auto"):
            raise ValueError(f"mixed_precision must be None, 'fp32', 'bf16' or 'auto', got {mixed_precision!r}")
        if residual_weight and residual is None:
            raise ValueError("residual_weight is set but no residual callable was given")
        self.dist = DistributedContext.current()
        if self.dist.active:
            self.dist.rows(batch_size)  # fails early, naming batch_size and the world size
            device = device or default_device()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        speed = resolve_speed(mixed_precision, channels_last, compile, self.device)
        self._bf16, self._channels_last = speed["precision"] == "bf16", speed["channels_last"]
        self.model = denoiser.to(self.device)
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.residual, self.loss_fn = residual, loss_fn
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.train_data, self.val_data = train_data, val_data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.settings = dict(
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, betas=list(betas), warmup_steps=warmup_steps,
            grad_clip=grad_clip, ema_decay=ema_decay, p_mean=p_mean, p_std=p_std, channel_weights=channel_weights,
            seed=seed, checkpoint_every=checkpoint_every, keep_last=keep_last, val_every=val_every,
            val_batches=val_batches, mixed_precision=mixed_precision, channels_last=channels_last,
            compile=compile, residual_weight=residual_weight,
        )
        self.extra_config = dict(config or {})
        self.progress = progress and self.dist.is_main
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(seed)
        self.step, self.epoch, self.position, self._logged = 0, 0, 0, 0
        self._perm: torch.Tensor | None = None
        self.history: list[dict] = []
        self.last_record: dict | None = None  # the newest step's record, kept across resumes
        if resume and self.out_dir is not None and ckpt.step_dirs(self.out_dir):  # the newest usable checkpoint
            c, damaged = ckpt.load_newest_usable(self.out_dir)
            if damaged and self.dist.is_main:
                warnings.warn(f"resuming {self.out_dir} from {c['dir'].name}, skipping damaged checkpoint(s): "
                              + "; ".join(damaged), stacklevel=2)
            self._restore(c)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids) if self.dist.active else None
        self._train_model = self._ddp if self._ddp is not None else self.model
        if speed["compile"]:
            self._train_model = torch.compile(self._train_model)

    # ------------------------------------------------------------------ data order
    def _next_indices(self) -> torch.Tensor:
        bs, n = self.settings["batch_size"], len(self.train_data)
        if self._perm is None:
            g = torch.Generator().manual_seed(_epoch_seed(self.settings["seed"], self.epoch))
            self._perm = torch.randperm(n, generator=g)
        idx = self._perm[self.position * bs : (self.position + 1) * bs]
        self.position += 1
        if (self.position + 1) * bs > n:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        return idx

    def _batch(self, dataset, idx) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in collate(dataset, idx).items()}
        if self._channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in batch.items()}
        return batch

    # ------------------------------------------------------------------ one step
    def _loss(self, model, batch, generator, noise=None) -> torch.Tensor:
        s = self.settings
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16):
            if self.loss_fn is not None:
                return self.loss_fn(model, batch, generator)
            return edm_loss(
                model, batch["x"], cond=batch.get("cond"), mask=batch.get("mask"),
                channel_weights=s["channel_weights"], p_mean=s["p_mean"], p_std=s["p_std"],
                sigma_data=float(self.model.sigma_data), generator=generator, noise=noise,
                residual=self.residual, residual_weight=s["residual_weight"],
            )

    def train_step(self) -> float:
        s = self.settings
        lr = s["lr"] * min(1.0, (self.step + 1) / max(1, s["warmup_steps"]))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        idx = self._next_indices()
        mine = idx if self._ddp is None else idx[self.dist.rows(len(idx))]
        if self._ddp is None or self.loss_fn is not None:  # (under DDP a loss_fn draws for this rank's rows)
            loss = self._loss(self._train_model, self._batch(self.train_data, mine), self.noise_gen)
        else:
            loss = self._rank_loss(self._train_model, self._batch(self.train_data, mine), len(idx))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s["grad_clip"] is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), s["grad_clip"])
        self.optimizer.step()
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p, 1 - s["ema_decay"])
            for e, b in zip(self.ema.buffers(), self.model.buffers()):
                e.copy_(b)
        self.step += 1
        if self._ddp is not None:  # report the global batch's loss, as the single-process run would
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss /= self.dist.world
        return float(loss.detach())

    def _rank_loss(self, model, batch, global_batch: int) -> torch.Tensor:
        """:func:`~sciffusion.diffusion.edm_loss` on this rank's rows of the global batch.

        The noise (``ln sigma ~ N(P_mean, P_std^2)`` per row, then ``eps``) is drawn for the whole
        global batch from the shared noise generator, in the order :func:`edm_loss` draws it, and
        this rank keeps its rows (``edm_loss(noise=...)``); so the mean of the ranks' losses (what
        DDP's gradient average differentiates) is the single-process loss of the global batch.
        """
        s, x0 = self.settings, batch["x"]
        rows = self.dist.rows(global_batch)
        sigma, eps = draw_noise((global_batch, *x0.shape[1:]), p_mean=s["p_mean"], p_std=s["p_std"],
                                generator=self.noise_gen, device=x0.device, dtype=x0.dtype)
        return self._loss(model, batch, None, noise=(sigma[rows], eps[rows]))

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean EDM loss of the EMA model on up to ``val_batches`` batches, with a fixed noise seed."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        self.ema.eval()
        g = torch.Generator(device=self.device).manual_seed(12345)
        bs, n, nb = self.settings["batch_size"], len(self.val_data), self.settings["val_batches"]
        batches = [torch.arange(b * bs, min(n, (b + 1) * bs)) for b in range(min(nb, math.ceil(n / bs)))]
        losses = [float(self._loss(self.ema, self._batch(self.val_data, idx), g)) * len(idx) for idx in batches]
        return sum(losses) / min(n, nb * bs)

    def fit(self, steps: int, callback: Callable[[dict], None] | None = None, *,
            max_seconds: float | None = None, threads: int | None = None, desc: str = "training") -> list[dict]:
        """Train until ``self.step == steps`` (a resumed run continues where it stopped).

        ``max_seconds``: stop early, after the step during which this much wall time has passed
        (a cluster job's time limit, a benchmark's budget); the run is checkpointed there as at
        the end, and calling :meth:`fit` again resumes it. ``self.stopped_early`` says whether it did.
        ``threads``: torch CPU threads while training (:func:`torch_threads`); ``desc`` labels the bar.
        """
        if max_seconds is not None and not max_seconds >= 0:
            raise ValueError(f"max_seconds must be a non-negative number of seconds, got {max_seconds!r}")
        with torch_threads(threads):
            return self._fit(int(steps), callback, max_seconds, desc)

    def _fit(self, steps: int, callback, max_seconds, desc) -> list[dict]:
        s = self.settings
        every = s["checkpoint_every"] or default_checkpoint_every(steps)
        val_every = s["val_every"] or every
        bar = tqdm(total=steps, initial=self.step, disable=not self.progress, desc=desc, dynamic_ncols=True)
        t0, n0 = time.perf_counter(), self.step
        self.stopped_early = False
        while self.step < steps:
            loss = self.train_step()
            out_of_time = max_seconds is not None and time.perf_counter() - t0 >= max_seconds and self.step < steps
            val = self.validate() if self.step % val_every == 0 or self.step == steps or out_of_time else None
            rate = (self.step - n0) * s["batch_size"] / max(time.perf_counter() - t0, 1e-9)
            record = {"step": self.step, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                      **({} if val is None else {"val_loss": val}), "samples_per_s": rate}
            self.history.append(record)
            self.last_record = record
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}")
            if callback is not None:
                callback(record)
            if self.out_dir is not None and (self.step % every == 0 or self.step == steps or out_of_time):
                self.save()
            if out_of_time:
                self.stopped_early = True
                break
        bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def model_spec(self) -> dict:
        """How to rebuild the model: ``{"net": spec, "sigma_data": ...}`` for a Denoiser, ``{"net": spec}``
        for a bare backbone trained with ``loss_fn``."""
        if isinstance(self.model, Denoiser):
            return {"net": net_spec(self.model.net), "sigma_data": self.model.sigma_data}
        if callable(getattr(self.model, "trainer_spec", None)):  # a module that is no backbone (distill's schedule)
            return self.model.trainer_spec()
        return {"net": net_spec(self.model)}

    def save(self) -> Path:
        """Write ``out_dir/step_XXXXXXX`` atomically, point ``latest`` at it, prune old ones."""
        if self.out_dir is None:
            raise ValueError("this Trainer has no out_dir to save to")
        name = f"step_{self.step:08d}"
        if self.dist.active:  # every rank's dropout RNG goes to rank 0, which alone writes
            states = self.dist.gather(self._rng_states())
            if not self.dist.is_main:
                self.dist.barrier()  # wait for rank 0's write, so `latest` is the same for all
                return self.out_dir / name
        opt_tensors, opt_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        rng = {"rng.noise": self.noise_gen.get_state(), **self._rng_states()}
        if self.dist.active:
            rng.update({f"{k}.rank{r}": v for r, st in enumerate(states) if r > 0 for k, v in st.items()})
        meta = {"step": self.step, "epoch": self.epoch, "position": self.position, "optimizer": opt_meta,
                "last": {k: v for k, v in (self.last_record or {}).items() if k != "samples_per_s"} or None}
        path = ckpt.save_checkpoint(
            self.out_dir / name, weights=self.model.state_dict(), ema=self.ema.state_dict(), trainer_meta=meta,
            config={"model": self.model_spec(), "training": self.settings, **self.extra_config}, trainer_tensors={**opt_tensors, **rng},
        )
        ckpt.atomic_write_bytes(self.out_dir / "latest", name.encode())
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in self.history if rec["step"] > self._logged)
        self._logged = self.step
        steps = [p for p in ckpt.step_dirs(self.out_dir) if int(p.name[5:]) <= self.step]  # (not a damaged newer one)
        for old in steps[: -self.settings["keep_last"]]:
            shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return path

    def _rng_states(self) -> dict[str, torch.Tensor]:
        cuda = {"rng.cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}
        return {"rng.torch": torch.get_rng_state(), **cuda}

    def load(self, path: str | os.PathLike) -> None:
        """Restore model, EMA, optimizer, step, data position and RNG states from a checkpoint."""
        self._restore(ckpt.load_checkpoint(path, trainer=True))

    def _restore(self, c: dict) -> None:
        run = self.out_dir or c["dir"].parent
        diff = ckpt.config_difference(c["config"].get("model"), json.loads(json.dumps(self.model_spec())))
        if diff:
            raise ValueError(f"out_dir {run} holds another model ({'; '.join(diff)}, stored vs new); "
                             "use --fresh (resume=False) or another out_dir")
        self.model.load_state_dict(c["weights"])
        self.ema.load_state_dict(c["ema"])
        tensors, meta = c["trainer_tensors"], c["trainer_meta"]
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["optimizer"]))
        self.noise_gen.set_state(tensors["rng.noise"])
        mine = f".rank{self.dist.rank}"  # DDP: this rank's own dropout RNG states, if saved
        torch.set_rng_state(tensors.get("rng.torch" + mine, tensors["rng.torch"]))
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors.get("rng.cuda" + mine, tensors["rng.cuda"]))
        self.step, self.epoch, self.position = meta["step"], meta["epoch"], meta["position"]
        self._perm, self._logged, self.last_record = None, self.step, meta.get("last")
        metrics = Path(run) / "metrics.jsonl"
        if metrics.exists() and self.dist.is_main:  # drop records written after this checkpoint by a killed run
            keep = [ln for ln in metrics.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
            ckpt.atomic_write_bytes(metrics, ("\n".join(keep) + "\n" if keep else "").encode())
