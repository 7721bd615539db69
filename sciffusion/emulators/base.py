"""The emulator base: checkpoints (:mod:`sciffusion.checkpoint`: safetensors + JSON, atomic, never
unpickled), training through :class:`~sciffusion.training.Trainer` (resumable with ``out_dir``), and the
provenance common to everything an emulator generates, which a resumed store is checked against.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch


class Emulator:
    """Base of the emulators: ``save``/``load``, ``checkpoint``/``checkpoint_sha256`` and provenance.

    Subclasses set ``key`` (their section of a checkpoint config, e.g. ``"rollout"``), ``label``
    (``"a rollout model"``, for errors), ``emulator`` (the qualified name recorded in provenance),
    ``coder_class`` (their field coder, stored by ``to_dict``/``from_dict``) and ``spec_keys`` (further
    constructor arguments, stored as they are). One EDM denoiser (``self.denoiser``) with ``self.coder``
    and ``self.sampler`` needs nothing else; other networks override :meth:`_checkpoint_content` and
    :meth:`_from_checkpoint` (see :class:`~sciffusion.emulators.DYffusion`).
    """

    key: ClassVar[str] = ""
    label: ClassVar[str] = "an emulator"
    emulator: ClassVar[str] = "sciffusion.emulators.Emulator"
    coder_class: ClassVar[type | None] = None
    spec_keys: ClassVar[tuple[str, ...]] = ()
    kinds: ClassVar[dict[str, type[Emulator]]] = {}  # checkpoint key -> emulator class
    checkpoint: str | None = None  # the checkpoint directory this emulator was saved to or loaded from
    checkpoint_sha256: str | None = None  # sha256 of its weights file (EMA weights when present)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("key"):
            Emulator.kinds[cls.key] = cls

    # ------------------------------------------------------------------ what a subclass says
    def spec(self) -> dict[str, Any]:
        """The JSON section ``config[key]`` of a checkpoint: the coder, the default sampler, ``spec_keys``."""
        return {"coder": self.coder.to_dict(), "sampler": dict(self.sampler), **{k: getattr(self, k) for k in self.spec_keys}}

    @classmethod
    def from_spec(cls, denoiser, spec: dict[str, Any]) -> Emulator:
        """The emulator around a trained ``denoiser`` described by ``spec`` (what :meth:`spec` wrote)."""
        return cls(denoiser, cls.coder_class.from_dict(spec["coder"]), sampler=spec.get("sampler"),
                   **{k: spec[k] for k in cls.spec_keys if k in spec})  # a key added later: its default

    def _checkpoint_content(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(weights, config)`` of a checkpoint: the denoiser's weights, its net under ``"model"``."""
        from sciffusion.nets import net_spec

        den = self.denoiser
        config = {"model": {"net": net_spec(den.net), "sigma_data": den.sigma_data}, self.key: self.spec()}
        return {k: v.detach().cpu().contiguous() for k, v in den.state_dict().items()}, config

    @classmethod
    def _from_checkpoint(cls, ckpt: dict[str, Any], device=None) -> Emulator:
        """The emulator of a :func:`~sciffusion.checkpoint.load_checkpoint` result (EMA weights when present)."""
        from sciffusion.checkpoint import denoiser_from

        return cls.from_spec(denoiser_from(ckpt, device=device), ckpt["config"][cls.key])

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint directory (safetensors weights + JSON config), atomically."""
        from sciffusion.checkpoint import save_checkpoint

        weights, config = self._checkpoint_content()
        path = save_checkpoint(path, weights=weights, config=config)
        self._link(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None):
        """Load a checkpoint written by :meth:`save` or by a ``fit`` run with ``out_dir``; a checkpoint
        of another emulator is refused, naming which it is."""
        from sciffusion.checkpoint import load_task

        others = {k: f"{c.label}; use {c.__name__}.load" for k, c in Emulator.kinds.items() if k != cls.key}
        ckpt = load_task(path, cls.key, cls.label, others=others)
        emulator = cls._from_checkpoint(ckpt, device)
        emulator._link(ckpt["dir"])
        return emulator

    def _link(self, path: str | os.PathLike) -> None:
        """Record ``path`` (a checkpoint or a run directory) as this emulator's checkpoint."""
        from sciffusion.checkpoint import resolve, sha256, weights_file

        d = resolve(path)
        self.checkpoint, self.checkpoint_sha256 = str(d), sha256(weights_file(d))

    # ------------------------------------------------------------------ training
    def _train_denoiser(self, data, steps: int, *, batch_size: int, max_seconds: float | None = None,
                        threads: int | None = None, **trainer_options) -> Emulator:
        """Train ``self.denoiser`` on ``data`` with :class:`~sciffusion.training.Trainer` (checkpoints carry
        ``{key: spec()}``, so a run directory loads as this emulator; with ``out_dir`` a rerun resumes), then
        keep the EMA weights, ``history``, ``last_record`` and, with ``out_dir``, the run's last checkpoint."""
        from sciffusion.training import Trainer

        trainer = Trainer(self.denoiser, data, batch_size=min(batch_size, len(data)), config={self.key: self.spec()},
                          **trainer_options)
        trainer.fit(steps, max_seconds=max_seconds, threads=threads)
        self.denoiser = trainer.ema.eval().requires_grad_(False)
        self.history, self.last_record = trainer.history, trainer.last_record
        if trainer.out_dir is not None:
            self._link(trainer.out_dir)
        return self

    def with_student(self, student) -> Emulator:
        """A copy of this emulator that samples with ``student``, a :class:`~sciffusion.distill.Student`
        distilled from its denoiser: the student's network and its ``student.calls``-call DDIM schedule
        replace the denoiser and the default sampler (other sampler settings and the coder stay).
        ``save`` writes it like any emulator; its provenance names no checkpoint until it is saved.

        A calibrated temperature stays too, but it was calibrated for this emulator's own sampler,
        and the student's spread differs (the shipped Lorenz-96 model's 2-call student: spread-skill
        0.96 at its teacher's temperature 0.86, 1.22 at its own 1.06, the teacher 1.20;
        docs/distillation.md). Calibrate the copy again on the same validation data,
        ``calibrate_spread(emulator.with_student(student), seeds, obs)``, which sets the copy's
        temperature, not this emulator's."""
        import copy

        if abs(float(student.sigma_data) - float(getattr(self.denoiser, "sigma_data", student.sigma_data))) > 1e-9:
            raise ValueError(f"the student's sigma_data {student.sigma_data} is not this emulator's "
                             f"{self.denoiser.sigma_data}: it was distilled from another model")
        out = copy.copy(self)
        out.denoiser = student.denoiser
        out.sampler = {**self.sampler, **student.sampler, "steps": student.steps}  # (its start too: the map it learned)
        out.checkpoint = out.checkpoint_sha256 = None
        return out

    # ------------------------------------------------------------------ provenance
    def provenance(self, call: str, *, source: Mapping | None = None, title: str | None = None,
                   **fields) -> dict[str, Any]:
        """Attributes of a generated dataset: what made it (version, emulator, checkpoint, weights hash),
        ``fields`` (sampler, seed...), when, ``history`` (``"<class>.<call>"``); with ``title`` also a title
        and source replacing those of the input's attributes ``source`` (:func:`~sciffusion.data.provenance.generated_attrs`)."""
        from sciffusion.data.provenance import generated_attrs, run_attrs

        described = {} if title is None else generated_attrs(source or {}, title, self.emulator)
        return {**described, **run_attrs(f"{type(self).__name__}.{call}", emulator=self.emulator,
                                         checkpoint=str(self.checkpoint or ""),
                                         checkpoint_sha256=str(self.checkpoint_sha256 or ""), **fields)}
