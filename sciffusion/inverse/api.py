"""One entry point for posterior sampling: :func:`sample`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from sciffusion.diffusion import karras_sigmas
from sciffusion.diffusion import sample as diffusion_sample
from sciffusion.diffusion.sample import step_function
from sciffusion.inverse.guidance import DPS, MMPS, PiGDM
from sciffusion.inverse.operators import Observation, as_operator, module_device, require_differentiable
from sciffusion.inverse.projection import ProjectedDenoiser, projected_step
from sciffusion.inverse.residual import ResidualGuidance
from sciffusion.inverse.smc import twisted_smc

METHODS = ("dps", "pigdm", "mmps", "smc", "projected", "residual")
GUIDANCE = {"dps": DPS, "pigdm": PiGDM, "mmps": MMPS}
_GUIDANCE_OPTIONS = {"dps": ("zeta", "sigma_data"), "pigdm": ("cg_iters", "sigma_data"), "mmps": ("cg_iters", "sigma_data")}


def guide(method: str, denoiser, observation: Observation, **options):
    """The guided wrapper denoiser of ``method`` in ``{"dps", "pigdm", "mmps"}``."""
    if method not in GUIDANCE:
        raise ValueError(f"unknown guidance {method!r}; choose one of {sorted(GUIDANCE)}")
    require_differentiable(observation.operator, observation.event_shape, method, device=observation.device)
    kwargs = {k: options[k] for k in _GUIDANCE_OPTIONS[method] if k in options}
    return GUIDANCE[method](denoiser, observation, **kwargs)


def sample(
    denoiser,
    operator,
    y,
    *,
    noise_std,
    method: str = "mmps",
    num_samples: int = 1,
    steps: int = 50,
    generator: torch.Generator | None = None,
    event_shape=None,
    sampler: str | Callable = "ddim",
    sigmas: torch.Tensor | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **options,
) -> torch.Tensor:
    """Draw ``num_samples`` samples ``(num_samples, *event_shape)`` of ``p(x0 | y)`` with ``y = A(x0) + n``.

    Args:
        denoiser: the prior, any ``denoiser(x, sigma, **cond) -> E[x0 | x]``.
        operator: forward operator ``A`` (an :mod:`sciffusion.inverse` operator or any callable);
            may be None for ``"projected"`` and ``"residual"`` without observations.
        y: observations ``obs_shape`` (``A(x)[0].shape``); NaN marks a missing entry.
        noise_std: observation noise std: scalar, per channel (first observation axis) or per entry.
        method:
            ``"dps"`` (``zeta``: likelihood-score strength, 1 by default; ``sigma_data``),
            ``"pigdm"`` (``cg_iters``, ``sigma_data``), ``"mmps"`` (``cg_iters``, ``sigma_data``),
            ``"smc"`` (``particles``, ``ess_threshold``, ``sigma_data``, ``twist``, ``kernel``; the samples carry ``.info``,
            a :class:`~sciffusion.inverse.smc.SMCResult` with the ESS trace and log-evidence),
            ``"projected"`` (``projection`` callable, ``guidance`` in ``dps``/``pigdm``/``mmps``/None
            used when ``y`` is given, ``project_iterates``, ``guide_projected``: compute the guidance
            on the projected estimate and differentiate through the projection, e.g. through the
            PDE solve of :class:`~sciffusion.inverse.DarcyProjection`),
            ``"residual"`` (``residual`` callable, ``zeta_obs``, ``zeta_pde``, ``pde_sigma``).
        num_samples, steps: number of draws and noise levels (see :func:`sciffusion.diffusion.sample`).
        generator: torch generator (or one per sample, except for ``"smc"``).
        event_shape: field shape; default ``denoiser.event_shape`` or ``operator.event_shape``.
        sampler: the step of :mod:`sciffusion.diffusion` the guided denoiser is run with
            (``"ddim"`` with ``eta = 1`` by default, ``"heun"``, ``"euler"``, ``"stochastic"`` or a
            step function); ``"smc"`` uses its own DDPM-type kernel. A stochastic sampler is the
            default because the guidance approximations err most on multimodal posteriors,
            where the deterministic ODE cannot recover from them (on the MCGdiff mixture
            problems, DDIM with ``eta = 1`` gave several times lower error than Heun at the
            same budget).
        sigmas, sigma_min, sigma_max, rho: noise levels (``karras_sigmas`` by default). Choose
            ``sigma_max`` well above the data scale.
        device: where to sample (default: the device of the denoiser's parameters, CPU for a plain
            function). ``y`` may live anywhere; an operator holding tensors elsewhere is copied there,
            and a ``generator`` must be a generator of that device. Samples are returned on it.
        **options: method options above, plus sampler options (``eta``, ``churn``...) and ``cond``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if event_shape is None:
        event_shape = getattr(denoiser, "event_shape", None) or getattr(operator, "event_shape", None)
    if event_shape is None:
        raise ValueError("event_shape is needed: pass event_shape=(...) (the denoiser and operator do not say)")
    event_shape = tuple(int(s) for s in event_shape)
    if sigmas is None:
        sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho)
    device = module_device(denoiser) if device is None else torch.device(device)
    sigmas = torch.as_tensor(sigmas, dtype=dtype).to(device)
    if float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must end in 0 so the samples are clean fields")

    obs = None
    if operator is not None:
        if y is None:
            raise ValueError("y is required when an operator is given")
        op = as_operator(operator)
        positive = method in ("dps", "smc", "residual")
        obs = Observation(op, y, noise_std, event_shape, positive=positive, dtype=dtype, device=device)
    elif method in ("dps", "pigdm", "mmps", "smc"):
        raise ValueError(f"method {method!r} needs an operator and observations y")

    cond = options.pop("cond", None)
    cond = {} if cond is None else {"cond": cond}
    if method == "smc":
        require_differentiable(obs.operator, event_shape, method, dtype, device)
        unknown = set(options) - {"particles", "ess_threshold", "sigma_data", "twist", "kernel"}
        if unknown:
            raise TypeError(f"unexpected options for method 'smc': {sorted(unknown)}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError("method 'smc' takes one torch.Generator (particles interact through resampling)")
        res = twisted_smc(denoiser, obs, sigmas, num_samples=int(num_samples), generator=generator, dtype=dtype,
                          **options, **cond)
        out = res.samples.detach()
        out.info = res
        return out

    step = step_function(sampler)
    if method in GUIDANCE:
        guided = guide(method, denoiser, obs, **options)
        options = {k: v for k, v in options.items() if k not in _GUIDANCE_OPTIONS[method]}
    elif method == "projected":
        projection = options.pop("projection", None)
        if projection is None or not callable(projection):
            raise ValueError("method 'projected' needs projection=<callable> (e.g. sciffusion.inverse.Box(0, 1))")
        guidance = options.pop("guidance", "pigdm")
        guide_projected = bool(options.pop("guide_projected", False))
        guided = denoiser
        if obs is not None and guidance is not None:
            inner = ProjectedDenoiser(denoiser, projection) if guide_projected else denoiser
            guided = guide(guidance, inner, obs, **options)
            options = {k: v for k, v in options.items() if k not in _GUIDANCE_OPTIONS[guidance]}
        guided = ProjectedDenoiser(guided, projection)
        if options.pop("project_iterates", False):
            step = projected_step(step, projection)
    else:  # residual
        residual = options.pop("residual", None)
        if residual is None:
            raise ValueError("method 'residual' needs residual=<callable> (e.g. sciffusion.inverse.DarcyResidual())")
        if obs is not None:
            require_differentiable(obs.operator, event_shape, method, dtype, device)
        kw = {k: options.pop(k) for k in ("zeta_obs", "zeta_pde", "pde_sigma") if k in options}
        guided = ResidualGuidance(denoiser, obs, residual, **kw)
    shape = (int(num_samples), *event_shape)
    x = diffusion_sample(guided, shape, sigmas=sigmas, method=step, generator=generator, dtype=dtype, device=device,
                         **options, **cond)
    return x.detach()

