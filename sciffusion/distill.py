"""Few-call samplers distilled from a trained denoiser: trajectory distillation (default),
progressive distillation (Salimans & Ho 2022) and learned noise levels (LD3, Tong et al. 2025),
all in the EDM parametrisation.

A student takes ``calls`` deterministic DDIM steps on noise levels ``s_0 > ... > s_calls = 0``;
one step from ``s`` to ``t`` is ``x_t = D + (t / s) (x_s - D)`` with ``D = D(x_s, s)``, so a step
lands on a chosen ``x_t`` exactly when ``D = (x_t - r x_s) / (1 - r)``, ``r = t / s``: that is the
student's regression target.

* ``method="trajectory"`` (knowledge distillation at every level, after Luhman & Luhman 2021): the
  teacher integrates its probability-flow ODE (Heun, ``teacher_steps`` Karras levels that contain the
  student's) from ``n_trajectories`` noise draws (per training condition), its states at the
  student's levels are kept, and the student learns each of its steps from them. One training run.
* ``method="progressive"``: DDIM on ``teacher_steps`` levels is halved round by round; the student
  of a round learns one step where its teacher takes two, from noised training data, and teaches
  the next round.
* ``method="schedule"`` (after LD3, "Learning to Discretize Denoising Diffusion ODEs", Tong et al.
  2025): the network stays the teacher's, frozen; only the ``calls - 1`` interior noise levels of a
  ``calls``-step DPM-Solver++(2M) are learned, by backpropagating through the solver the squared
  distance of its end state to the teacher's from the same noise (the teacher's ODE as above, only
  its start and end states kept). A handful of parameters: nothing to overfit, and the teacher's
  generalisation over conditions is kept. Needs ``calls >= 2`` (one call is the denoised mean).

The result is a :class:`Student`: a plain :class:`~sciffusion.diffusion.Denoiser` plus its noise
levels; ``sample(student, shape, **student.sampler)`` draws with ``calls`` network calls, and so do
the emulators given it. Training runs through :class:`~sciffusion.training.Trainer` (EMA,
checkpoints, exact resume) in ``out_dir``; ``benchmarks/distill_gmm.py`` measures both methods
against the exact Gaussian-mixture yardstick.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from sciffusion.diffusion import Denoiser, karras_sigmas
from sciffusion.diffusion.schedules import SIGMA_MAX

METHODS = ("trajectory", "progressive", "schedule")
SOLVERS = ("ddim", "dpmpp2m")  # a student's sampler: DDIM (trajectory, progressive) or DPM-Solver++(2M) (schedule)
TEACHER_METHODS = ("heun", "euler", "ddim", "dpmpp2m")  # deterministic samplers that can integrate a teacher's ODE
# the method-dependent defaults of distill's n_trajectories, steps, batch_size, lr and warmup_steps
DEFAULTS = {"trajectory": {"n_trajectories": 20000, "steps": 4000, "batch_size": 256, "lr": 3e-4, "warmup_steps": 100},
            "progressive": {"n_trajectories": 20000, "steps": 4000, "batch_size": 256, "lr": 3e-4, "warmup_steps": 100},
            "schedule": {"n_trajectories": 512, "steps": 400, "batch_size": 16, "lr": 1e-2, "warmup_steps": 20}}


class Student(nn.Module):
    """A distilled denoiser with the noise levels it was trained for: ``calls`` steps of ``method``
    (``"ddim"`` with eta = 0, or ``"dpmpp2m"``, DPM-Solver++(2M), for a learned schedule).

    Call it like a denoiser; pass ``**student.sampler`` to :func:`sciffusion.diffusion.sample`.
    """

    def __init__(self, denoiser: Denoiser, sigmas: torch.Tensor, method: str = "ddim", start: str = "noise"):
        super().__init__()
        if method not in SOLVERS:
            raise ValueError(f"a student's method must be one of {SOLVERS}, got {method!r}")
        if start not in ("noise", "centred"):
            raise ValueError(f"a student's start must be 'noise' or 'centred', got {start!r}")
        self.denoiser, self.method, self.start = denoiser, method, start
        self.register_buffer("sigmas", torch.as_tensor(sigmas, dtype=torch.float64))

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def calls(self) -> int:
        """Network calls per sample: one per step, and one more for a centred start."""
        return self.steps + (self.start == "centred")

    @property
    def sigma_data(self) -> float:
        return self.denoiser.sigma_data

    @property
    def sampler(self) -> dict:
        out = {"method": "ddim", "eta": 0.0} if self.method == "ddim" else {"method": self.method}
        return {**out, "sigmas": self.sigmas.tolist(), "start": self.start}

    def forward(self, x, sigma, cond=None, **kwargs):
        return self.denoiser(x, sigma, cond=cond, **kwargs)

    def save(self, path: str | os.PathLike, config: dict | None = None) -> Path:
        """safetensors weights + JSON (the net's config, ``sigma_data``, the noise levels and ``config``,
        e.g. the teacher's data spec and normaliser, so ``sciffusion sample`` reads it like the teacher)."""
        from sciffusion.checkpoint import save_checkpoint
        from sciffusion.nets import net_spec

        config = {**(config or {}), "model": {"net": net_spec(self.denoiser.net), "sigma_data": self.sigma_data},
                  "student": {"sigmas": self.sigmas.tolist(), "method": self.method, "start": self.start}}
        return save_checkpoint(path, weights=self.denoiser.state_dict(), config=config)

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> Student:
        from sciffusion.checkpoint import load_denoiser

        denoiser, config = load_denoiser(path, device=device)
        if "student" not in config:
            raise ValueError(f"{os.fspath(path)!r} holds no distilled student (its config has no 'student' entry)")
        spec = config["student"]
        return cls(denoiser, torch.tensor(spec["sigmas"], dtype=torch.float64), spec.get("method", "ddim"),
                   spec.get("start", "noise"))


def _deterministic(method: str):
    """``method``'s step function (a fresh one: DPM-Solver++(2M) keeps per-trajectory state) and the
    options that make it deterministic (DDIM's ``eta = 0``)."""
    from sciffusion.diffusion.sample import step_function

    return step_function(method), ({"eta": 0.0} if method == "ddim" else {})


def _conditions(train_data):
    """The event shape, dtype and conditions (None without) of a distillation's training rows."""
    from sciffusion.data.batches import collate

    first = collate(train_data, torch.arange(min(len(train_data), 1)))
    cond = collate(train_data, torch.arange(len(train_data))).get("cond") if "cond" in first else None
    return tuple(first["x"].shape[1:]), first["x"].dtype, cond


def _view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def _ddim(denoiser, x, s, t, cond):
    d = denoiser(x, s, cond=cond)
    return d + _view(t / s, x) * (x - d)


def _step_loss(model, x0, x1, s0, s1, cond):
    """EDM-weighted squared error of ``model``'s denoised value at ``(x0, s0)`` against the one whose
    DDIM step to ``s1`` lands on ``x1``."""
    target = (x1 - _view(s1 / s0, x0) * x0) / (1 - _view(s1 / s0, x0))
    sd2 = model.sigma_data ** 2
    return (_view((s0 ** 2 + sd2) / (s0 ** 2 * sd2), x0) * (model(x0, s0.to(x0.dtype), cond=cond) - target) ** 2).mean()


@torch.no_grad()
def teacher_trajectories(teacher, sigmas: torch.Tensor, every: int, n: int, event_shape, cond=None, *, seed: int = 0,
                         batch_size: int = 512, dtype=torch.float32, device=None, progress: bool = False,
                         method: str = "heun", start: str = "noise") -> torch.Tensor:
    """The teacher's ODE on ``sigmas`` (decreasing, ending in 0), integrated by ``method`` (Heun, or
    ``"dpmpp2m"``, ``"euler"``, ``"ddim"`` with eta = 0: a model's own deterministic sampler) from ``n``
    noise draws (seeded by ``seed``), kept every ``every`` levels: ``(n, (len(sigmas) - 1) // every + 1,
    *event_shape)``. Row ``j`` is conditioned on ``cond[j % len(cond)]``. ``start="centred"`` starts each
    trajectory at ``s z + D(s z, s)``, ``sample``'s centred start; the kept first state is the draw ``s z``."""
    from sciffusion.diffusion.sample import centred_start

    if method not in TEACHER_METHODS:
        raise ValueError(f"the teacher's method must be a deterministic sampler, one of {TEACHER_METHODS}, got {method!r}")
    g = torch.Generator().manual_seed(int(seed))
    kept = list(range(0, len(sigmas), every))
    out = torch.empty((n, len(kept), *event_shape), dtype=dtype)
    sig = sigmas.to(device=device, dtype=dtype)
    for a in tqdm(range(0, n, batch_size), disable=not progress, desc="teacher trajectories", leave=False):
        b = min(n, a + batch_size) - a
        c = None if cond is None else cond[torch.arange(a, a + b) % len(cond)].to(device=device, dtype=dtype)
        x = (float(sigmas[0]) * torch.randn((b, *event_shape), generator=g, dtype=torch.float64)).to(device, dtype)
        out[a : a + b, 0] = x.cpu()  # the draw sigma_max z (a centred start is a function of it)
        if start == "centred":
            x = centred_start(teacher, x, sig[0], **({} if c is None else {"cond": c}))
        step, kw = _deterministic(method)  # (a fresh multistep state per batch)
        for i in range(len(sigmas) - 1):
            x = step(teacher, x, sig[i], sig[i + 1], noise=None, cond={} if c is None else {"cond": c}, **kw)
            if (i + 1) % every == 0:
                out[a : a + b, (i + 1) // every] = x.cpu()
    return out


class _Rows(torch.utils.data.Dataset):
    """Training rows ``{"x": states[i], "cond": cond[i % len(cond)]}`` for the Trainer."""

    def __init__(self, states, cond):
        self.states, self.cond = states, cond

    def __len__(self):
        return len(self.states)

    def batch(self, idx):
        return {"x": self.states[idx]} if self.cond is None else {"x": self.states[idx], "cond": self.cond[idx % len(self.cond)]}


def _trajectory_loss(levels: torch.Tensor):
    def loss_fn(model, batch, generator):
        states, cond = batch["x"], batch.get("cond")
        k = torch.randint(0, len(levels) - 1, (len(states),), generator=generator, device=generator.device).to(states.device)
        rows, lv = torch.arange(len(states), device=states.device), levels.to(states.device)
        return _step_loss(model, states[rows, k], states[rows, k + 1], lv[k], lv[k + 1], cond)

    return loss_fn


def _progressive_loss(teacher, levels: torch.Tensor):
    """Two DDIM steps of ``teacher`` from noised training data at an even level of ``levels``."""

    def loss_fn(model, batch, generator):
        x0, cond = batch["x"], batch.get("cond")
        i = 2 * torch.randint(0, (len(levels) - 1) // 2, (len(x0),), generator=generator, device=generator.device).to(x0.device)
        s = levels.to(x0.device)
        s0, s1, s2 = s[i], s[i + 1], s[i + 2]
        z = x0 + _view(s0, x0) * torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
        with torch.no_grad():
            x2 = _ddim(teacher, _ddim(teacher, z, s0.to(x0.dtype), s1.to(x0.dtype), cond), s1.to(x0.dtype), s2.to(x0.dtype), cond)
        return _step_loss(model, z, x2, s0, s2, cond)

    return loss_fn


class _Schedule(nn.Module):
    """The ``calls + 1`` noise levels of a learned schedule: a top level, ``calls - 1`` interior levels,
    and 0. With ``w = softmax(u)``, ``log sigma_i = log sigma_max - (log sigma_max - log sigma_min) *
    (w_1 + ... + w_i)``: decreasing, and above ``sigma_min`` (the last share is what is left below the
    last interior level). The top is ``sigma_max`` itself (where the teacher's trajectories start), or,
    with ``learn_top`` (a centred start), learned as well: ``u`` has one share more, the first one the
    gap below ``sigma_max``. A narrow conditional law is nearly exact at a centred start far below
    ``sigma_max`` (``s z + D(s z, s)``), so calls spent above it are wasted. It starts at the first
    ``calls`` of ``calls + 1`` Karras levels, so no call is spent at ``sigma_min``."""

    def __init__(self, calls: int, sigma_min: float, sigma_max: float, rho: float, learn_top: bool = False):
        super().__init__()
        logs = torch.log(karras_sigmas(calls + 1, sigma_min, sigma_max, rho)[:calls])
        gaps = -torch.diff(torch.cat([logs, torch.tensor([math.log(sigma_min)], dtype=logs.dtype)]))
        if learn_top:  # a first share of 0.1% of the range: the top starts just below sigma_max
            gaps = torch.cat([gaps.sum()[None] * 1e-3, gaps])
        self.u = nn.Parameter(torch.log(gaps / gaps.sum()))
        self.register_buffer("bounds", torch.tensor([math.log(sigma_max), math.log(sigma_min)], dtype=torch.float64))
        self.register_buffer("top", torch.tensor([sigma_max], dtype=torch.float64))  # exactly, not exp(log(.))
        self.config = {"calls": calls, "sigma_min": sigma_min, "sigma_max": sigma_max, "rho": rho}
        if learn_top:
            self.config["learn_top"] = True

    def sigmas(self) -> torch.Tensor:
        hi, lo = self.bounds
        levels = torch.exp(hi - (hi - lo) * torch.cumsum(torch.softmax(self.u, 0), 0)[:-1])
        zero = torch.zeros(1, dtype=levels.dtype, device=levels.device)
        return torch.cat([levels, zero] if self.config.get("learn_top") else [self.top.to(levels.dtype), levels, zero])

    def trainer_spec(self) -> dict:
        return {"schedule": dict(self.config)}


def solve(denoiser, x: torch.Tensor, sigmas: torch.Tensor, method: str = "dpmpp2m", cond=None) -> torch.Tensor:
    """``method``'s deterministic steps on ``sigmas`` (ending in 0) from ``x``, differentiable in ``x`` and
    ``sigmas``: what ``sample(denoiser, x=x, sigmas=sigmas, method=method)`` computes (``eta = 0`` for DDIM)."""
    step, kw = _deterministic(method)
    c = {} if cond is None else {"cond": cond}
    sig = sigmas.to(x.dtype)
    for i in range(len(sig) - 1):
        x = step(denoiser, x, sig[i], sig[i + 1], noise=None, cond=c, **kw)
    return x


def _schedule_loss(teacher, sigma_max: float, centred: bool):
    """Mean squared distance of the learned schedule's DPM-Solver++(2M) end state to the teacher's, from
    the same draw ``z`` (the kept first state is ``sigma_max z``); with ``centred`` the student starts at
    ``s z + D(s z, s)``, ``s`` its own (learned) top level, as ``sample(start="centred")`` does."""
    from sciffusion.diffusion.sample import centred_start

    def loss_fn(model, batch, generator):
        states, cond = batch["x"], batch.get("cond")
        sig = model.sigmas().to(states.dtype)
        x = states[:, 0]
        if centred:
            x = centred_start(teacher, sig[0] * (x / sigma_max), sig[0], **({} if cond is None else {"cond": cond}))
        return (solve(teacher, x, sig, "dpmpp2m", cond) - states[:, -1]).pow(2).mean()

    return loss_fn


def distill(teacher, train_data, *, calls: int = 2, method: str = "trajectory", teacher_steps: int = 64,
            n_trajectories: int | None = None, student: Denoiser | None = None, steps: int | None = None,
            batch_size: int | None = None, lr: float | None = None, warmup_steps: int | None = None,
            ema_decay: float = 0.99, sigma_min: float = 0.002, teacher_method: str = "heun", teacher_start: str = "noise",
            sigma_max: float = SIGMA_MAX, rho: float = 7.0, seed: int = 0, out_dir: str | os.PathLike | None = None,
            device=None, progress: bool = True, threads: int | None = None, config: dict | None = None) -> Student:
    """Distil ``teacher`` into a ``calls``-call :class:`Student` (see the module docstring).

    Args:
        teacher: a denoiser ``teacher(x, sigma, cond=None)``: a trained :class:`Denoiser`, or an exact
            one such as :class:`sciffusion.testing.GaussianMixture` (then pass ``student``).
        train_data: dataset of ``{"x", "cond"}`` dicts: the teacher's training data ("progressive"
            noises it; "trajectory" takes only the shape of ``x`` and the conditions ``cond``).
        calls: network calls per sample; ``teacher_steps / calls`` must be an integer >= 2 ("trajectory")
            or a power of two >= 2 ("progressive").
        method: ``"trajectory"`` or ``"progressive"``.
        teacher_steps: Karras levels of the teacher's ODE (``teacher_method`` for "trajectory" and
            "schedule", DDIM for "progressive"), from ``sigma_max`` to ``sigma_min`` with ``rho``. With ``teacher_steps``, ``sigma_min``,
            ``sigma_max`` and ``rho`` of a model's own Heun sampler, a "trajectory" student learns
            exactly the map from noise to sample that the model's default sampler computes.
        teacher_method: the deterministic sampler that integrates the teacher's ODE ("heun" by default;
            "dpmpp2m", "euler" or "ddim" to learn a model whose default sampler is one of those).
        teacher_start: ``"centred"`` ("schedule" only): the teacher's ODE starts at ``sample``'s centred
            start, and so does the student, whose first call is that start (``calls - 1`` steps follow)
            at a top level it learns too, from the same draw ``z``.
        n_trajectories: teacher trajectories to learn from ("trajectory", "schedule").
        student: the network to train (default: a copy of ``teacher``, which must then be a Denoiser;
            "schedule" trains no network and refuses it).
        steps: training steps ("progressive": per round, log2(teacher_steps / calls) rounds).
        batch_size, lr, warmup_steps, ema_decay, seed, device, progress, threads: the
            :class:`~sciffusion.training.Trainer`'s (``batch_size`` at most the number of rows).
            ``n_trajectories``, ``steps``, ``batch_size``, ``lr`` and ``warmup_steps`` default to the
            method's entry of :data:`DEFAULTS` (20,000 / 4,000 / 256 / 3e-4 / 100 for "trajectory" and
            "progressive"; 512 / 400 / 16 / 1e-2 / 20 for "schedule", which fits ``calls - 1`` numbers).
        out_dir: the runs (``out_dir/trajectory`` or ``out_dir/round_k``, resumable), the trajectories
            (``trajectories.safetensors``) and the student (``out_dir/student``, :meth:`Student.load`),
            whose checkpoint also holds ``config``.
    """
    from sciffusion.training import Trainer, seeded

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    given = {"n_trajectories": n_trajectories, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps}
    n_trajectories, steps, batch_size, lr, warmup_steps = (DEFAULTS[method][k] if v is None else v for k, v in given.items())
    rounds = math.log2(teacher_steps / calls) if calls >= 1 and teacher_steps >= calls else -1
    if method == "progressive" and (rounds < 1 or rounds != int(rounds)):
        raise ValueError(f"progressive: teacher_steps / calls must be a power of two >= 2 (one halving per round), "
                         f"got teacher_steps={teacher_steps}, calls={calls}")
    if method == "trajectory" and (calls < 1 or teacher_steps % calls or teacher_steps < 2 * calls):
        raise ValueError(f"trajectory: teacher_steps must be a multiple of calls, at least twice it (the student's "
                         f"levels are every (teacher_steps / calls)-th of the teacher's), got teacher_steps={teacher_steps}, calls={calls}")
    if teacher_method not in TEACHER_METHODS:
        raise ValueError(f"teacher_method must be a deterministic sampler, one of {TEACHER_METHODS}, got {teacher_method!r}")
    if teacher_start not in ("noise", "centred") or (teacher_start == "centred" and method != "schedule"):
        raise ValueError(f"teacher_start must be 'noise', or 'centred' with method='schedule' (the student then "
                         f"shares the teacher's centred start), got {teacher_start!r} with method={method!r}")
    if method == "progressive" and teacher_method != "heun":
        raise ValueError(f"progressive: the teacher takes DDIM steps by construction; teacher_method={teacher_method!r} does not apply")
    if method == "schedule" and (calls < 2 or teacher_steps < 1 or student is not None):
        raise ValueError("schedule: learns the noise levels of the teacher's own network, so it needs calls >= 2 "
                         f"(one call is the denoised mean), teacher_steps >= 1 and no student=; got calls={calls}, "
                         f"teacher_steps={teacher_steps}, student={'given' if student is not None else None}")
    if method == "schedule":
        return _distill_schedule(teacher, train_data, calls, teacher_steps, n_trajectories, steps, batch_size, lr,
                                 warmup_steps, ema_decay, sigma_min, sigma_max, rho, seed, out_dir, device, progress,
                                 threads, config, teacher_method, teacher_start)
    if student is None and not isinstance(teacher, Denoiser):
        raise ValueError("pass student= (a Denoiser to train) when the teacher is not a Denoiser to copy")
    with seeded(seed):
        current = copy.deepcopy(student if student is not None else teacher).requires_grad_(True)
    sigmas = karras_sigmas(teacher_steps, sigma_min, sigma_max, rho)
    every = teacher_steps // calls
    out = None if out_dir is None else Path(out_dir)
    kw = dict(batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay, device=device,
              progress=progress, mixed_precision=None)
    if method == "trajectory":
        shape, dtype, cond = _conditions(train_data)
        states = _cached(out, lambda: teacher_trajectories(
            teacher, sigmas, every, n_trajectories, shape, cond, seed=seed, dtype=dtype, device=device,
            progress=progress, method=teacher_method), levels=calls + 1)
        trainer = Trainer(current, _Rows(states, cond), out_dir=None if out is None else out / "trajectory", seed=seed,
                          loss_fn=_trajectory_loss(sigmas[::every]), **{**kw, "batch_size": min(batch_size, len(states))})
        trainer.fit(steps, threads=threads, desc=f"distill {calls} call(s)")
        result = trainer.ema
    else:
        for r in range(int(rounds)):
            levels = sigmas[:: 2 ** r]
            trainer = Trainer(current, train_data, out_dir=None if out is None else out / f"round_{r}", seed=seed + r,
                              loss_fn=_progressive_loss(teacher, levels), **{**kw, "batch_size": min(batch_size, len(train_data))})
            trainer.fit(steps, threads=threads, desc=f"distill round {r + 1}/{int(rounds)} ({(len(levels) - 1) // 2} steps)")
            teacher = copy.deepcopy(trainer.ema).requires_grad_(False).eval()
            current = copy.deepcopy(trainer.ema).requires_grad_(True)
        result = teacher
    student = Student(copy.deepcopy(result).requires_grad_(False).eval(), sigmas[::every])
    if out is not None:
        student.save(out / "student", config)
    return student


def _distill_schedule(teacher, train_data, calls, teacher_steps, n_trajectories, steps, batch_size, lr, warmup_steps,
                      ema_decay, sigma_min, sigma_max, rho, seed, out_dir, device, progress, threads, config,
                      teacher_method, teacher_start) -> Student:
    """``method="schedule"``: the teacher's start and end states, then the levels fitted through a Trainer."""
    from sciffusion.training import Trainer

    frozen = teacher
    if isinstance(teacher, nn.Module):  # a frozen copy: no gradient reaches (or accumulates on) the caller's teacher
        frozen = copy.deepcopy(teacher).requires_grad_(False).eval()
        if device is not None:
            frozen = frozen.to(device)
    shape, dtype, cond = _conditions(train_data)
    out = None if out_dir is None else Path(out_dir)
    states = _cached(out, lambda: teacher_trajectories(
        frozen, karras_sigmas(teacher_steps, sigma_min, sigma_max, rho), teacher_steps, n_trajectories, shape, cond,
        seed=seed, dtype=dtype, device=device, progress=progress, method=teacher_method, start=teacher_start), levels=2)
    steps_ = calls - (teacher_start == "centred")  # a centred start is the first of the calls
    trainer = Trainer(_Schedule(steps_, sigma_min, sigma_max, rho, learn_top=teacher_start == "centred"),
                      _Rows(states, cond), out_dir=None if out is None else out / "schedule", seed=seed,
                      loss_fn=_schedule_loss(frozen, sigma_max, teacher_start == "centred"),
                      batch_size=min(batch_size, len(states)), lr=lr, warmup_steps=warmup_steps, ema_decay=ema_decay,
                      device=device, progress=progress, mixed_precision=None)
    trainer.fit(steps, threads=threads, desc=f"learn {calls} noise levels")
    with torch.no_grad():
        levels = trainer.ema.sigmas().cpu()
    result = Student(frozen, levels, method="dpmpp2m", start=teacher_start)
    if out is not None:
        result.save(out / "student", config)
    return result


def _cached(out: Path | None, make, levels: int | None = None) -> torch.Tensor:
    """``make()``, kept in ``out/trajectories.safetensors`` so a resumed run does not integrate again."""
    if out is None:
        return make()
    from safetensors.torch import load_file, save

    from sciffusion.checkpoint import atomic_write_bytes

    path = out / "trajectories.safetensors"
    if path.exists():
        states = load_file(path)["states"]
        if levels is not None and states.shape[1] != levels:
            raise ValueError(f"{path} holds teacher states at {states.shape[1]} levels per trajectory, not the {levels} "
                             "this run keeps: it was written by another method or number of calls; use another out_dir")
        return states
    states = make()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"states": states.contiguous()}))
    return states
