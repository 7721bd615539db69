"""Samplers for the probability-flow ODE / SDE of ``x = x0 + sigma * eps`` (EDM convention).

Every sampler is one short step function with the same signature::

    step(denoiser, x, sigma, sigma_next, *, noise, cond, **options) -> x_next

and :func:`sample` runs any of them over a decreasing sequence of noise levels. Any callable
``denoiser(x, sigma, **cond) -> E[x0 | x]`` works: a trained :class:`~sciffusion.diffusion.Denoiser`,
an exact one from :mod:`sciffusion.testing`, or a guidance wrapper.

A step's options are its keyword-only parameters (:func:`step_keywords`), so :func:`sample`
refuses an option the chosen step does not take instead of dropping it. Besides ``noise`` and
``cond``, :func:`sample` gives ``steps`` (the number of moves) and ``sigmas`` (the whole schedule)
to a step that declares them.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from sciffusion.diffusion.philox import PhiloxStreams
from sciffusion.diffusion.schedules import SIGMA_MAX, karras_sigmas
from sciffusion.diffusion.streams import (  # noqa: F401  (re-exported: their home until this split)
    RNGS,
    member_generators,
    spawn_states,
    stream_generators,
)

NoiseFn = Callable[[], torch.Tensor]
SUPPLIED = ("noise", "cond", "steps", "sigmas")  # keywords sample() gives a step itself, not options
OPTIONS = ("churn", "s_tmin", "s_tmax", "s_noise", "eta")  # the step options sample() takes by name


def _d(denoiser, x, sigma, cond):
    """ODE slope dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3 for sigma(t) = t)."""
    return (x - denoiser(x, sigma.expand(x.shape[0]), **cond)) / sigma


def euler_step(denoiser, x, sigma, sigma_next, *, noise: NoiseFn, cond: dict) -> torch.Tensor:
    """First-order step of the probability-flow ODE: ``x + (s' - s) d(x, s)``. 1 NFE."""
    return x + (sigma_next - sigma) * _d(denoiser, x, sigma, cond)


def heun_step(denoiser, x, sigma, sigma_next, *, noise: NoiseFn, cond: dict) -> torch.Tensor:
    """Heun's 2nd-order step (EDM Algorithm 1); falls back to Euler when ``s' = 0``. 2 NFE (1 at the end)."""
    d = _d(denoiser, x, sigma, cond)
    x_next = x + (sigma_next - sigma) * d
    if sigma_next == 0:
        return x_next
    d_next = _d(denoiser, x_next, sigma_next, cond)
    return x + (sigma_next - sigma) * (d + d_next) / 2


def stochastic_step(
    denoiser,
    x,
    sigma,
    sigma_next,
    *,
    noise: NoiseFn,
    cond: dict,
    steps: int,
    churn: float = 30.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    r"""EDM stochastic sampler step (Algorithm 2): add noise to raise ``sigma`` to
    :math:`\hat\sigma = \sigma(1+\gamma)`, :math:`\gamma = \min(S_{churn}/N, \sqrt2-1)` when
    :math:`S_{tmin}\le\sigma\le S_{tmax}`, then take a Heun step from :math:`\hat\sigma` to ``sigma_next``.
    ``churn`` (S_churn) is the spread knob: 0 gives the deterministic Heun sampler."""
    gamma = min(churn / steps, math.sqrt(2) - 1) if s_tmin <= float(sigma) <= s_tmax else 0.0
    if gamma > 0:
        sigma_hat = sigma * (1 + gamma)
        x = x + (sigma_hat**2 - sigma**2).sqrt() * s_noise * noise()
        sigma = sigma_hat
    return heun_step(denoiser, x, sigma, sigma_next, noise=noise, cond=cond)


def ddim_step(denoiser, x, sigma, sigma_next, *, noise: NoiseFn, cond: dict, eta: float = 1.0) -> torch.Tensor:
    r"""DDIM (Song et al. 2021) in variance-exploding form. With :math:`\hat x_0 = D(x,\sigma)` and
    :math:`\hat\epsilon = (x - \hat x_0)/\sigma`,

    .. math::
        x' = \hat x_0 + \sqrt{\sigma'^2 - c^2}\,\hat\epsilon + c\,z,\qquad
        c = \eta\,\sigma'\sqrt{\sigma^2-\sigma'^2}/\sigma .

    ``eta = 0`` is deterministic (equal to Euler), ``eta = 1`` samples the exact DDPM posterior
    ``q(x' | x, x0 = x0_hat)``. 1 NFE."""
    x0 = denoiser(x, sigma.expand(x.shape[0]), **cond)
    if sigma_next == 0:
        return x0
    c = eta * sigma_next * (sigma**2 - sigma_next**2).clamp_min(0).sqrt() / sigma
    x_next = x0 + (sigma_next**2 - c**2).clamp_min(0).sqrt() * (x - x0) / sigma
    return x_next + c * noise() if eta > 0 else x_next


class DPMSolver2M:
    r"""DPM-Solver++(2M) (Lu et al. 2022): the multistep second-order exponential integrator of the
    data-prediction ODE, in the EDM parametrisation (``alpha = 1``, ``lambda = -log sigma``). 1 NFE.

    .. math::
        x' = \frac{\sigma'}{\sigma} x + \Big(1 - \frac{\sigma'}{\sigma}\Big)
        \Big(\hat x_0 + \frac{\hat x_0 - \hat x_0^{prev}}{2r}\Big),\qquad
        r = \frac{\log(\sigma_{prev}/\sigma)}{\log(\sigma/\sigma')}

    The first step (no previous estimate) is DDIM with ``eta = 0``; the last (``sigma' = 0``)
    returns ``x0_hat``. It keeps the previous step's estimate, so a trajectory needs its own
    instance: :func:`sample` (via :func:`step_function`) makes one per call. On a narrow Gaussian
    it is markedly closer to the exact law than Heun at the same number of network calls.
    """

    def __init__(self):
        self._prev: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, denoiser, x, sigma, sigma_next, *, noise: NoiseFn, cond: dict) -> torch.Tensor:
        x0 = denoiser(x, sigma.expand(x.shape[0]), **cond)
        prev, self._prev = self._prev, (x0, sigma)
        if sigma_next == 0:
            self._prev = None
            return x0
        d = x0
        if prev is not None and prev[1] > sigma and prev[0].shape == x0.shape:
            r = torch.log(prev[1] / sigma) / torch.log(sigma / sigma_next)
            d = x0 + (x0 - prev[0]) / (2 * r)
        ratio = sigma_next / sigma
        return ratio * x + (1 - ratio) * d


METHODS: dict[str, Callable] = {
    "heun": heun_step,
    "euler": euler_step,
    "stochastic": stochastic_step,
    "ddim": ddim_step,
    "dpmpp2m": DPMSolver2M,  # a class: stateful, one instance per trajectory (see step_function)
}


def step_function(method: str | Callable) -> Callable:
    """The step callable for ``method``, a name in :data:`METHODS` or a step function; a stateful
    step (a class, such as :class:`DPMSolver2M`) gets a fresh instance."""
    step = METHODS.get(method) if isinstance(method, str) else method
    if step is None:
        raise ValueError(f"unknown sampler method {method!r}; choose one of {sorted(METHODS)} or pass a step function")
    return step() if isinstance(step, type) else step


def step_keywords(step: Callable) -> tuple[str, ...] | None:
    """The keywords ``step`` takes after ``(denoiser, x, sigma, sigma_next)``, in order, or None
    when it takes any (a ``**kwargs`` parameter). A wrapper step declares those of the step it
    wraps in a ``sampler_keywords`` attribute (see :func:`forward_step`)."""
    if hasattr(step, "sampler_keywords"):
        return step.sampler_keywords
    if isinstance(step, type):
        step = step.__call__
        skip = 5  # self, denoiser, x, sigma, sigma_next
    else:
        skip = 4
    try:
        params = list(inspect.signature(step).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): it decides for itself
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return tuple(p.name for p in positional[skip:] if p.kind is p.POSITIONAL_OR_KEYWORD) + tuple(
        p.name for p in params if p.kind is p.KEYWORD_ONLY)


def step_options(step: Callable) -> tuple[str, ...] | None:
    """The options of ``step`` (:func:`step_keywords` less those :func:`sample` supplies); None: any."""
    keys = step_keywords(step)
    return None if keys is None else tuple(k for k in keys if k not in SUPPLIED)


def forward_step(step: Callable, denoiser, x, sigma, sigma_next, **kwargs) -> torch.Tensor:
    """Call ``step`` from a wrapper step, dropping the keywords :func:`sample` supplies (``steps``,
    ``sigmas``) that ``step`` does not declare; options are passed as given."""
    keys = step_keywords(step)
    if keys is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in keys or k not in SUPPLIED}
    return step(denoiser, x, sigma, sigma_next, **kwargs)


def step_name(method: str | Callable) -> str:
    """The name of a sampler for messages: its key in :data:`METHODS`, else its ``__name__``."""
    if isinstance(method, str):
        return method
    for name, step in METHODS.items():
        if method is step or type(method) is step:
            return name
    return getattr(method, "__name__", type(method).__name__)


def check_options(owner: str, given: Iterable[str], valid: Sequence[str] | None,
                  note: str | Callable[[], str] = "", hints: Sequence[str] = ()) -> None:
    """Raise TypeError if a name in ``given`` is not in ``valid`` (None: anything is valid),
    naming ``owner``, each unknown option with the closest name in ``valid`` or ``hints``, the
    valid options and ``note`` (a string, or a function making it, called only to raise)::

        sampler 'heun' takes no option 'eta'; its options: none. ('ddim': eta; ...)
    """
    if valid is None:
        return
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    close = {k: difflib.get_close_matches(k, [*valid, *hints], n=1, cutoff=0.6) for k in unknown}
    named = [f"{k!r} (did you mean {c[0]!r}?)" if c else repr(k) for k, c in close.items()]
    plural = "s" if len(unknown) > 1 else ""
    note = note() if callable(note) else note
    tail = f" ({note})" if note else ""
    listed = ", ".join(valid) or "none"
    raise TypeError(f"{owner} takes no option{plural} {', '.join(named)}; its options: {listed}.{tail}")


def options_menu(exclude: str | None = None) -> str:
    """``"'stochastic': churn, s_tmin, s_tmax, s_noise; 'ddim': eta"``: the built-in samplers with options."""
    options = {name: step_options(step_function(name)) for name in METHODS if name != exclude}
    return "; ".join(f"{name!r}: {', '.join(opts)}" for name, opts in options.items() if opts)


def randn(shape, generator=None, *, dtype=None, device=None) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a sequence of generators, row ``k`` is drawn from
    ``generator[k]`` alone (per-member seeding); with :class:`PhiloxStreams`, every row from its own
    stream in one vectorised pass."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if isinstance(generator, PhiloxStreams):
        return generator.randn(shape, dtype=dtype, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} members")
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=device) for g in generator])


def sample(
    denoiser,
    shape: Sequence[int],
    *,
    sigmas: torch.Tensor | None = None,
    steps: int = 18,
    method: str | Callable = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    x: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = False,
    churn: float | None = None,
    s_tmin: float | None = None,
    s_tmax: float | None = None,
    s_noise: float | None = None,
    eta: float | None = None,
    start: str = "noise",
    temperature: float = 1.0,
    **cond,
) -> torch.Tensor:
    """Draw samples ``(B, *event_shape)`` from the distribution the denoiser was trained on.

    Args:
        denoiser: any ``denoiser(x, sigma, **cond) -> E[x0 | x]``.
        shape: ``(B, *event_shape)``.
        sigmas: decreasing noise levels ending in 0; default ``karras_sigmas(steps, sigma_min, sigma_max, rho)``.
        steps: number of noise levels when ``sigmas`` is not given (NFE: heun 2*steps-1,
            stochastic 2*steps-1, euler and ddim steps).
        method: ``"heun"``, ``"euler"``, ``"stochastic"``, ``"ddim"``, ``"dpmpp2m"``, or a step
            function with the signature of :func:`heun_step`.
        generator: a ``torch.Generator``, or one generator per member (see
            :func:`member_generators`) so each member's draw does not depend on the batch.
        x: starting point at ``sigmas[0]`` (default: see ``start``).
        start: ``"noise"``: ``x = sigmas[0] * z``; ``"centred"``: ``x = s z + D(s z, s)`` with
            ``s = sigmas[0]``, one more network call. The law of ``x`` at ``sigmas[0]`` has the data's
            mean, not 0; starting from zero-mean noise shifts every sample by about
            ``-mean * tau / sigma_max`` for a conditional law of width ``tau`` (8% of the mean for
            ``tau = 0.7`` from ``sigma_max = 10``); the centred start removes that.
        temperature: scales the starting draw ``z`` (before the centred start, so the centring is
            not scaled); above 1 widens the samples, e.g. a distilled student's.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next"}``.
        progress: show a tqdm bar (default off, unlike the long-running entry points - ``fit``,
            ``generate``, ``rollout``, ``downscale``, ``simulate``: this is their inner loop).
        churn, s_tmin, s_tmax, s_noise: EDM stochastic-sampler options (``method="stochastic"``;
            default 30, 0, inf, 1).
        eta: DDIM stochasticity (``method="ddim"``; default 1): 0 deterministic, 1 DDPM-like.
            A sampler option left at None takes the method's default; one the method does not
            take raises TypeError naming the method's options (a step function's options are its
            keyword-only parameters; one with ``**kwargs`` takes any).
        **cond: passed to every denoiser call (e.g. ``cond=...`` conditioning fields). A keyword
            that is a near miss of an option of this function (``chrun``, ``sigma``) raises
            TypeError instead of reaching the denoiser, which may ignore it.
    """
    step_fn = step_function(method)
    options = {k: v for k, v in zip(OPTIONS, (churn, s_tmin, s_tmax, s_noise, eta)) if v is not None}
    check_sample_options(step_fn, {**options, **cond})
    if start not in ("noise", "centred"):
        raise ValueError(f"start must be 'noise' or 'centred'; got {start!r}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0 (it scales the starting draw), got {temperature!r}")
    if sigmas is None:
        sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho)
    sigmas = torch.as_tensor(sigmas, dtype=dtype, device=device)
    if sigmas.ndim != 1 or len(sigmas) < 2 or not bool((sigmas[:-1] > sigmas[1:]).all()) or sigmas[-1] < 0:
        raise ValueError("sigmas must be a 1-D decreasing sequence of non-negative noise levels of length >= 2")
    shape = tuple(int(s) for s in shape)

    def noise() -> torch.Tensor:
        return randn(shape, generator, dtype=dtype, device=device)

    if x is None:
        x = sigmas[0] * noise() if temperature == 1 else float(temperature) * sigmas[0] * noise()
        if start == "centred":
            x = centred_start(denoiser, x, sigmas[0], **cond)
    elif tuple(x.shape) != shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but shape={shape}")
    n = len(sigmas) - 1
    keys = step_keywords(step_fn)
    options.update({k: v for k, v in {"steps": n, "sigmas": sigmas}.items() if keys is None or k in keys})
    for i in tqdm(range(n), disable=not progress, desc="sampling", leave=False):
        x = step_fn(denoiser, x, sigmas[i], sigmas[i + 1], noise=noise, cond=cond, **options)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1]})
    return x


def centred_start(denoiser, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
    """``sample``'s centred start from a draw ``x = sigma z``: ``x + D(x, sigma)``, whose law at ``sigma``
    has the data's mean (one network call)."""
    return x + denoiser(x, sigma.expand(x.shape[0]), **cond)


KEYWORDS = tuple(p.name for p in inspect.signature(sample).parameters.values() if p.kind is p.KEYWORD_ONLY)


def check_sample_options(method: str | Callable, kwargs: dict) -> None:
    """Raise the TypeError that ``sample(..., method=method, **kwargs)`` raises, without sampling
    (for callers that allocate output before the first draw): a sampler option (not None) that
    ``method`` does not take, or a conditioning keyword that is a near miss (difflib ratio >= 0.8)
    of a keyword of :func:`sample`, since the denoiser it would go to may ignore it."""
    step = step_function(method)
    name = step_name(step)
    options = [k for k in OPTIONS if kwargs.get(k) is not None]
    check_options(f"sampler {name!r}", options, step_options(step), lambda: options_menu(exclude=name))
    for k in kwargs:
        close = difflib.get_close_matches(k, KEYWORDS, n=1, cutoff=0.8) if k not in KEYWORDS else None
        if close:
            raise TypeError(f"sample() got {k!r}: did you mean {close[0]!r}? (any other keyword is conditioning passed "
                            f"to the denoiser, where a misspelt option would be ignored; rename the conditioning "
                            f"if {k!r} is meant)")


class CountingDenoiser:
    """Wraps a denoiser and counts network function evaluations (``nfe``, one per call)."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x, sigma, **cond):
        self.nfe += 1
        return self.denoiser(x, sigma, **cond)

    def __getattr__(self, name):
        return getattr(self.denoiser, name)
