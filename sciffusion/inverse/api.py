"""One entry point for posterior sampling: :func:`sample`."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch

from sciffusion._deprecate import renamed
from sciffusion.diffusion import karras_sigmas
from sciffusion.diffusion import sample as diffusion_sample
from sciffusion.diffusion.sample import KEYWORDS, check_options, step_function, step_name, step_options
from sciffusion.diffusion.sample import OPTIONS as SAMPLER_OPTIONS
from sciffusion.inverse.guidance import DPS, MMPS, PiGDM
from sciffusion.inverse.operators import Observation, as_operator, module_device, require_differentiable
from sciffusion.inverse.projection import ProjectedDenoiser, projected_step
from sciffusion.inverse.residual import ResidualGuidance
from sciffusion.inverse.smc import twisted_smc

METHODS = ("dps", "pigdm", "mmps", "smc", "projected", "residual")
GUIDANCE = {"dps": DPS, "pigdm": PiGDM, "mmps": MMPS}
# DDIM with eta = 1 (stochastic): guidance errs most on multimodal posteriors, where an ODE cannot
# recover (on the MCGdiff mixtures it beat Heun several times over at equal budget; see sample())
DEFAULT_SAMPLER = "ddim"
# default sigma_max = this times the prior's rms norm sqrt(E|x0|^2) (data_scale): the noised prior is then
# Gaussian to KL ~ 1 / (4 SCALE^4); chosen on validation mixtures, benchmarks/results/posterior_gmm_validation.json
SIGMA_MAX_SCALE = 10.0


def _options(fn, skip: tuple[str, ...]) -> tuple[str, ...]:
    """The named parameters of ``fn`` (a class: its constructor) less ``skip``: the options it declares."""
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip)


# each method's options, read from the class or function that takes them ("projected" adds those
# of its inner guidance when it has observations to guide with)
OPTIONS = {
    **{m: _options(cls, ("denoiser", "observation")) for m, cls in GUIDANCE.items()},
    "smc": _options(twisted_smc, ("denoiser", "observation", "sigmas", "n_members", "generator", "dtype")),
    "projected": ("projection", "inner_guidance", "guide_projected", "project_iterates"),
    "residual": _options(ResidualGuidance, ("denoiser", "observation")),
}
# keywords of sciffusion.diffusion.sample that pass through (this function sets the others itself)
PASSED = tuple(k for k in KEYWORDS if k not in ("sigmas", "steps", "method", "sigma_min", "sigma_max", "rho",
                                                "generator", "dtype", "device"))


def _takers(names, own=()) -> str:
    """``"'dps' takes zeta"``: the methods that take the options ``names`` not in ``own``."""
    return "; ".join(f"{m!r} takes {k}" for k in names if k not in own for m, opts in OPTIONS.items() if k in opts)


def guide(method: str, denoiser, observation: Observation, **options):
    """The guided wrapper denoiser of ``method`` in ``{"dps", "pigdm", "mmps"}``; an option the
    method does not take raises TypeError naming its options."""
    if method not in GUIDANCE:
        raise ValueError(f"unknown guidance {method!r}; choose one of {sorted(GUIDANCE)}")
    check_options(f"guidance method {method!r}", options, OPTIONS[method], lambda: _takers(options, OPTIONS[method]))
    require_differentiable(observation.operator, observation.event_shape, method, device=observation.device)
    return GUIDANCE[method](denoiser, observation, **options)


def data_scale(denoiser, event_shape, dtype=torch.float32, device=None, **cond) -> float:
    r"""The prior's rms norm :math:`\sqrt{E|x_0|^2}`: ``sigma_data * sqrt(d)`` when the denoiser has a
    ``sigma_data``, else measured by Tweedie at a noise level ``s`` far above any data scale, where
    :math:`D(0, s) \to E[x_0]` and :math:`s^2 \operatorname{tr} \partial_x D(0, s) \to \operatorname{tr} Cov[x_0]`
    (exact trace for ``d <= 256``, else 64 Rademacher probes)."""
    d = math.prod(event_shape)
    if getattr(denoiser, "sigma_data", None) is not None:
        return float(denoiser.sigma_data) * math.sqrt(d)
    s, n = 1e6, d if d <= 256 else 64
    v = torch.eye(d) if d <= 256 else torch.randint(0, 2, (n, d), generator=torch.Generator().manual_seed(0)) * 2.0 - 1
    v = v.to(dtype=dtype, device=device).reshape(n, *event_shape)
    with torch.enable_grad():
        x = torch.zeros_like(v, requires_grad=True)
        mean = denoiser(x, torch.full((n,), s, dtype=dtype, device=device), **cond)
        (jv,) = torch.autograd.grad(mean, x, v)
    trace = s**2 * float((v * jv).sum()) / (1 if n == d else n)
    return math.sqrt(max(trace, 0.0) + float((mean[0].detach().double() ** 2).sum()))


def _renamed(func):
    """Deprecated keywords of :func:`sample`: ``num_samples=`` (``n_members=``), ``method=`` (``guidance=``)
    and, with ``method=``, the old ``guidance=`` of ``"projected"`` (``inner_guidance=``)."""

    @functools.wraps(func)
    def inner(*args, **kwargs):
        if "method" in kwargs and "guidance" in kwargs:
            renamed(kwargs, "guidance", "inner_guidance", "sample")
        for old, new in (("num_samples", "n_members"), ("method", "guidance")):
            renamed(kwargs, old, new, "sample")
        return func(*args, **kwargs)

    return inner


@_renamed
def sample(
    denoiser,
    operator,
    y,
    *,
    noise_std,
    guidance: str = "mmps",
    n_members: int = 1,
    steps: int = 50,
    generator: torch.Generator | None = None,
    event_shape=None,
    sampler: str | Callable | None = None,
    sigmas: torch.Tensor | None = None,
    sigma_min: float = 0.002,
    sigma_max: float | None = None,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **options,
) -> torch.Tensor:
    """Draw ``n_members`` samples ``(n_members, *event_shape)`` of ``p(x0 | y)`` with ``y = A(x0) + n``.

    Args:
        denoiser: the prior, any ``denoiser(x, sigma, **cond) -> E[x0 | x]``.
        operator: forward operator ``A`` (an :mod:`sciffusion.inverse` operator or any callable);
            may be None for ``"projected"`` and ``"residual"`` without observations.
        y: observations ``obs_shape`` (``A(x)[0].shape``); NaN marks a missing entry.
        noise_std: observation noise std: scalar, per channel (first observation axis) or per entry.
        guidance: the method (``method=``: deprecated alias; ``sampler=`` names the sampler):
            ``"dps"`` (``zeta``: likelihood-score strength, 1 by default; ``sigma_data``),
            ``"pigdm"`` (``cg_iters``, ``sigma_data``), ``"mmps"`` (``cg_iters``, ``sigma_data``),
            ``"smc"`` (``particles``, ``ess_threshold``, ``sigma_data``, ``twist``, ``kernel``; the samples
            carry ``.info``, a :class:`~sciffusion.inverse.smc.SMCResult` with the ESS trace and log-evidence),
            ``"projected"`` (``projection`` callable, ``inner_guidance`` in ``dps``/``pigdm``/``mmps``/None
            used when ``y`` is given, ``project_iterates``, ``guide_projected``: compute the guidance
            on the projected estimate and differentiate through the projection, e.g. through the
            PDE solve of :class:`~sciffusion.inverse.DarcyProjection`),
            ``"residual"`` (``residual`` callable, ``zeta_obs``, ``zeta_pde``, ``pde_sigma``).
        n_members, steps: number of draws and noise levels (see :func:`sciffusion.diffusion.sample`);
            ``num_samples=`` is a deprecated alias of ``n_members=``.
        generator: torch generator (or one per sample, except for ``"smc"``).
        event_shape: field shape; default ``denoiser.event_shape`` or ``operator.event_shape``.
        sampler: the step of :mod:`sciffusion.diffusion` the guided denoiser is run with
            (None: ``"ddim"`` with ``eta = 1``; ``"heun"``, ``"euler"``, ``"stochastic"`` or a
            step function); ``"smc"`` uses its own DDPM-type kernel and takes none. A stochastic sampler is the
            default because the guidance approximations err most on multimodal posteriors,
            where the deterministic ODE cannot recover from them (on the MCGdiff mixture
            problems, DDIM with ``eta = 1`` gave several times lower error than Heun at the
            same budget).
        sigmas, sigma_min, sigma_max, rho: noise levels (``karras_sigmas`` by default). The default
            ``sigma_max`` is ``SIGMA_MAX_SCALE = 10`` times the prior's rms norm (:func:`data_scale`:
            ``sigma_data * sqrt(d)``), where the noised prior is Gaussian to within the sampling floor.
        device: where to sample (default: the device of the denoiser's parameters, CPU for a plain
            function). ``y`` may live anywhere; an operator holding tensors elsewhere is copied there,
            and a ``generator`` must be a generator of that device. Samples are returned on it.
        **options: method options above, plus ``cond`` (conditioning for the denoiser) and, except
            for ``"smc"``, the sampler's options (``eta``, ``churn``...) and the keywords ``x``,
            ``callback``, ``progress``, ``start`` of :func:`sciffusion.diffusion.sample`. Any other
            option, or one the method or sampler does not take, raises TypeError naming the valid ones.
    """
    method = guidance
    if method not in METHODS:
        raise ValueError(f"unknown guidance {method!r}; choose one of {list(METHODS)}")
    if int(n_members) != n_members or n_members < 1:
        raise ValueError(f"n_members must be a positive integer, got {n_members!r}")
    if event_shape is None:
        event_shape = getattr(denoiser, "event_shape", None) or getattr(operator, "event_shape", None)
    if event_shape is None:
        raise ValueError("event_shape is needed: pass event_shape=(...) (the denoiser and operator do not say)")
    event_shape = tuple(int(s) for s in event_shape)
    device = module_device(denoiser) if device is None else torch.device(device)
    if sigmas is None:
        if sigma_max is None:
            cond0 = {} if options.get("cond") is None else {"cond": options["cond"]}
            sigma_max = SIGMA_MAX_SCALE * data_scale(denoiser, event_shape, dtype, device, **cond0)
        sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho)
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
        check_options("guidance method 'smc'", options, OPTIONS["smc"], hints=("cond",),
                      note=lambda: f"it runs its own kernel: no sampler options; {_takers(options, OPTIONS['smc'])}"
                      .rstrip("; "))
        if sampler is not None:
            raise TypeError(f"method 'smc' runs its own DDPM-type kernel; it takes no sampler (got {sampler!r})")
        require_differentiable(obs.operator, event_shape, method, dtype, device)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError("method 'smc' takes one torch.Generator (particles interact through resampling)")
        res = twisted_smc(denoiser, obs, sigmas, n_members=int(n_members), generator=generator, dtype=dtype,
                          **options, **cond)
        out = res.samples.detach()
        out.info = res
        return out

    step = step_function(DEFAULT_SAMPLER if sampler is None else sampler)
    passed = {k: options.pop(k) for k in PASSED if k in options}
    inner = options.get("inner_guidance", "pigdm") if method == "projected" else None
    if inner is not None and inner not in GUIDANCE:
        raise ValueError(f"unknown guidance {inner!r} for method 'projected'; choose one of {sorted(GUIDANCE)} or None")
    own = OPTIONS[method] + (OPTIONS[inner] if inner is not None and obs is not None else ())

    def note() -> str:
        extra = ", ".join(k for k in PASSED if k not in SAMPLER_OPTIONS)
        opts = step_options(step)
        return (f"besides cond, {extra} and the options of sampler {step_name(step)!r}: "
                f"{'any' if opts is None else ', '.join(opts) or 'none'}; {_takers(options, own)}").rstrip("; ")

    check_options(f"guidance method {method!r}", options, own, note, hints=(*PASSED, "cond"))
    if method in GUIDANCE:
        guided = guide(method, denoiser, obs, **options)
    elif method == "projected":
        projection = options.pop("projection", None)
        if projection is None or not callable(projection):
            raise ValueError("method 'projected' needs projection=<callable> (e.g. sciffusion.inverse.Box(0, 1))")
        options.pop("inner_guidance", None)
        guide_projected = bool(options.pop("guide_projected", False))
        project_iterates = options.pop("project_iterates", False)
        guided = denoiser
        if obs is not None and inner is not None:
            prior = ProjectedDenoiser(denoiser, projection) if guide_projected else denoiser
            guided = guide(inner, prior, obs, **options)
        guided = ProjectedDenoiser(guided, projection)
        if project_iterates:
            step = projected_step(step, projection)
    else:  # residual
        if options.get("residual") is None:
            raise ValueError("method 'residual' needs residual=<callable> (e.g. sciffusion.inverse.DarcyResidual())")
        if obs is not None:
            require_differentiable(obs.operator, event_shape, method, dtype, device)
        guided = ResidualGuidance(denoiser, obs, **options)
    shape = (int(n_members), *event_shape)
    x = diffusion_sample(guided, shape, sigmas=sigmas, method=step, generator=generator, dtype=dtype, device=device,
                         **passed, **cond)
    return x.detach()
