"""The cycled filter: forecast -> analysis, one observation time after another.

Tensors only: ``forecast`` maps an ensemble ``(N, *state)`` to the next observation time (a
``sciffusion.systems`` model's ``step``, an emulator's rollout...), and each analysis is a call of
:func:`sciffusion.assimilate.analysis`, or of :func:`~sciffusion.assimilate.local_analysis` when
``domains`` are given (large states). Every input is checked before the first cycle runs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sciffusion.assimilate.analysis import analysis
from sciffusion.assimilate.forecast_prior import check_prior, forecast_prior_analysis
from sciffusion.assimilate.local import Domains, local_analysis
from sciffusion.assimilate.relax import check_coefficients, relax
from sciffusion.inverse import as_operator

RELAXATION = ("rtps", "rtpp")  # analysis options that relax() takes, after any analysis


@dataclass
class FilterResult:
    """``analysis`` and ``forecast`` ensembles ``(T, N, *state)``, one per observation time;
    ``seconds`` the wall time of each analysis ``(T,)``."""

    analysis: torch.Tensor
    forecast: torch.Tensor
    seconds: torch.Tensor


class _Recorder:
    """The cycle's record: each cycle's forecast, analysis and analysis seconds, with the ``callback``."""

    def __init__(self, callback):
        self.callback, self.forecasts, self.analyses, self.seconds = callback, [], [], []

    def __call__(self, t: int, xf: torch.Tensor, x: torch.Tensor, seconds: float) -> None:
        self.forecasts.append(xf)
        self.analyses.append(x)
        self.seconds.append(seconds)
        if self.callback is not None:
            self.callback(t, xf, x)

    def result(self) -> FilterResult:
        return FilterResult(torch.stack(self.analyses), torch.stack(self.forecasts),
                            torch.tensor(self.seconds, dtype=torch.float64))


def check_inputs(ensemble: torch.Tensor, operator, observations: torch.Tensor, noise_std, n_cycles=None):
    """Raise ValueError naming the offending input: observations whose time axis or shape does not
    match (``n_cycles``, the operator's output on the state), an operator that fails on the state,
    a negative or non-finite ``noise_std``, or one that fits neither a scalar, per-entry nor per-time std.
    Returns ``noise_std`` as a ``(T, *obs)`` tensor."""
    if ensemble.ndim < 2 or ensemble.shape[0] < 2:
        raise ValueError(f"ensemble must be (N, *state) with N >= 2 members, got shape {tuple(ensemble.shape)}")
    state = tuple(ensemble.shape[1:])
    try:
        with torch.no_grad():
            out = as_operator(operator)(ensemble[:1])
    except Exception as exc:  # the operator's own message says which axis it wanted
        raise ValueError(f"operator {operator!r} cannot be applied to the state of shape {state}: {exc}") from exc
    obs_shape = tuple(out.shape[1:])
    if observations.ndim < 1 or tuple(observations.shape[1:]) != obs_shape:
        raise ValueError(f"observations have shape {tuple(observations.shape)} (time, *obs) but operator {operator!r} "
                         f"maps the state {state} to observations of shape {obs_shape}: expected (T, *{obs_shape})")
    t = observations.shape[0]
    if n_cycles is not None and t != n_cycles:
        raise ValueError(f"observations have {t} times on their time axis (first), the run has {n_cycles} cycles")
    std = torch.as_tensor(noise_std, dtype=torch.float64)
    if not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
        raise ValueError(f"noise_std must be finite and non-negative, got min {float(std.min()):g}")
    try:
        if std.ndim > len(obs_shape) and std.shape[0] != t:
            raise RuntimeError
        return torch.broadcast_to(std, (t, *obs_shape))
    except RuntimeError:
        raise ValueError(f"noise_std of shape {tuple(std.shape)} fits neither a scalar, the observation shape "
                         f"{obs_shape} nor the observations' shape {tuple(observations.shape)}") from None


def check_domains(ensemble: torch.Tensor, operator, domains: Domains | None, function=None) -> None:
    """Raise ValueError unless ``operator`` on ``ensemble`` gives, in every used observation slot of
    ``domains``, ``function`` of the state entry the slot reads (the local analysis sees only that);
    TypeError for a ``function`` without ``domains``."""
    if domains is None:
        if function is not None:
            raise TypeError("function= is the local analysis' observation function; it goes with domains=")
        return
    x = ensemble.reshape(ensemble.shape[0], -1).to(torch.float64)
    with torch.no_grad():
        y = as_operator(operator)(ensemble).reshape(ensemble.shape[0], -1).to(torch.float64)
    domains.check(x.shape[1], y.shape[1])
    used = domains.weight > 0
    read = x[:, domains.windows.gather(1, domains.obs_pos)[used]]
    local = read if function is None else function(read)
    if not torch.allclose(local, y[:, domains.obs[used]], rtol=1e-5, atol=1e-6 * float(y.abs().max().clamp_min(1))):
        raise ValueError(f"operator {operator!r} does not equal the domains' pointwise observation "
                         f"{getattr(function, '__name__', function)!r}(x[obs_index]) on the initial ensemble: "
                         "the local analysis would assimilate other observations than the operator describes")


def analyse(xf: torch.Tensor, operator, y: torch.Tensor, std: torch.Tensor, domains: Domains | None, function,
            generator, options: dict, prior=None) -> torch.Tensor:
    """One analysis: :func:`analysis`, :func:`local_analysis` with ``domains``, or
    :func:`forecast_prior_analysis` with ``prior``; then :func:`~sciffusion.assimilate.relax` by the
    ``rtps``/``rtpp`` of ``options`` (any of the three)."""
    options = dict(options)
    relaxation = {k: options.pop(k) for k in RELAXATION if k in options}
    if prior is not None:
        xa = forecast_prior_analysis(prior, xf, operator, y, noise_std=std, generator=generator, **options)
    elif domains is None:
        xa = analysis(xf, operator, y, noise_std=std, generator=generator, **options)
    else:
        xa = local_analysis(xf, y.reshape(-1), domains=domains, noise_std=std.reshape(-1), function=function,
                            generator=generator, **options)
    return relax(xf, xa, **relaxation)


def check_relaxation(options: dict) -> None:
    """ValueError before any cycle runs for an ``rtps``/``rtpp`` outside [0, 1]."""
    check_coefficients(**{k: options[k] for k in RELAXATION if k in options})


def cycle(forecast: Callable[[torch.Tensor], torch.Tensor], ensemble: torch.Tensor, operator,
          observations: torch.Tensor, *, noise_std, n_cycles: int | None = None,
          generator: torch.Generator | None = None,
          callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
          domains: Domains | None = None, function: Callable[[torch.Tensor], torch.Tensor] | None = None,
          prior=None, lag: int = 1, mda: bool = False, mda_inflation: float = 1.0,
          **analysis_options) -> FilterResult:
    """Run ``T`` cycles: ``x_f = forecast(x_a)``, ``x_a = analysis(x_f, operator, y_t)``.

    With ``lag=K > 1`` each analysis is four-dimensional (see :func:`window_operator`): the prior is the
    analysis ensemble of time ``t - K`` (the initial ensemble while ``t < K``), the observations those of
    times ``t - K + 1 .. t``, seen through ``K`` forecast steps; the posterior draws at ``t - K`` are then
    carried to ``t`` by the forecast. No observation is used twice: every analysis is a filter's, of
    everything observed up to ``t``, with the Gaussian (or mixture) fit made ``K`` steps earlier, so
    the forecast's nonlinearity over the window enters the analysis exactly. ``forecast`` must then be
    deterministic and differentiable in torch (checked before the first cycle), and the analysis is the
    global :func:`analysis` (not ``domains=`` or ``prior=``). ``FilterResult.forecast[t]`` is then the
    prior ensemble of time ``t - K`` carried to ``t``.

    Args:
        forecast: ``(N, *state) -> (N, *state)`` to the next observation time.
        ensemble: initial analysis members ``(N, *state)`` (the forecast runs first).
        operator: observation operator (shared by all times).
        observations: ``(T, *obs)``; NaN marks a missing observation (an all-NaN time is skipped).
        noise_std: scalar, ``obs``-shaped, or ``(T, *obs)`` per time.
        n_cycles: expected ``T`` (checked against the observations' time axis).
        generator: torch generator for every analysis (seeded, never global state).
        callback: ``callback(t, forecast, analysis)`` after each cycle (e.g. to score or write it).
        domains, function: analyse by :func:`~sciffusion.assimilate.local_analysis` with these
            domains and the elementwise observation function (None: identity); ``operator`` must then
            be the same pointwise observation, ``function(x[..., obs_index])``, which is checked on the
            initial ensemble before the first cycle. None (default): the global ``analysis``.
        prior: a trained :class:`~sciffusion.assimilate.ForecastPrior` (or a conditional denoiser
            ``(x, sigma, cond=x_f)``): analyse by :func:`~sciffusion.assimilate.forecast_prior_analysis`,
            each member drawn from ``p(x | its forecast, y)``. None (default): the forecast ensemble's prior.
        lag: the analysis window ``K`` in observation times (1, default: the usual filter).
        mda: with ``lag > 1``, multiple data assimilation over windows that move by one time (the
            iEnKS-MDA of Bocquet & Sakov 2014): the prior of each window is then a chain ensemble that
            has already used the window's earlier observations in part, each observation assimilated
            in the ``K`` windows that hold it with weight ``1 / K`` (noise variance times ``K``). Each
            cycle runs two window analyses from that prior: the output, with each observation's
            remaining weight (so it uses everything observed up to ``t`` exactly once, as a filter
            does), and the chain's step, carried one time forward. See :func:`_tempered`.
        mda_inflation: the inflation of the chain's analysis (``inflation`` is the output's).
        **analysis_options: keywords of :func:`~sciffusion.assimilate.analysis` (``bandwidth``,
            ``inflation``, ``localization``, ``guidance``, ``steps``, ``start``, ``cg_iters``...), and
            ``rtps``/``rtpp``: relax each analysis' spread towards its forecast's by
            :func:`~sciffusion.assimilate.relax` (with any analysis, the trained prior's too).
    """
    observations = torch.as_tensor(observations)
    std = check_inputs(ensemble, operator, observations, noise_std, n_cycles)
    check_domains(ensemble, operator, domains, function)
    check_relaxation(analysis_options)
    if prior is not None:
        check_prior(prior, ensemble, domains)
    check_mda(lag, mda, mda_inflation)
    if lag != 1:
        check_lag(forecast, ensemble, operator, lag, domains, prior)
        if mda:
            return _tempered(forecast, ensemble, operator, observations, std, lag, generator, callback,
                             analysis_options, mda_inflation)
        return _lagged(forecast, ensemble, operator, observations, std, lag, generator, callback, analysis_options)
    x, record = ensemble, _Recorder(callback)
    for t in range(observations.shape[0]):
        xf = forecast(x)
        start = time.perf_counter()
        x = analyse(xf, operator, observations[t], std[t], domains, function, generator, analysis_options, prior)
        record(t, xf, x, time.perf_counter() - start)
    return record.result()


def check_mda(lag, mda, mda_inflation) -> None:
    """ValueError for ``mda=True`` with ``lag < 2``, a non-boolean ``mda`` or ``mda_inflation`` without it."""
    if not isinstance(mda, bool):
        raise ValueError(f"mda must be True or False, got {mda!r}")
    if not mda and mda_inflation != 1.0:
        raise ValueError(f"mda_inflation={mda_inflation!r} is the inflation of the mda=True chain; mda is off")
    if mda and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 2):
        raise ValueError(f"mda=True assimilates each observation over the lag windows that hold it: it needs "
                         f"lag >= 2, got lag={lag!r}")


def window_operator(forecast, operator, k: int):
    """The observation operator of a window: ``x -> (B, k, *obs)``, ``operator`` on each of the ``k``
    forecast states after ``x`` (``forecast`` applied 1..k times; or a sequence of ``k`` forecasts, one
    per interval), for the lagged analysis of :func:`cycle` and :func:`~sciffusion.assimilate.assimilate`."""
    op = as_operator(operator)
    steps = [forecast] * k if callable(forecast) else list(forecast)
    if len(steps) != k:
        raise ValueError(f"window_operator: {len(steps)} forecasts for a window of {k} observation times")

    def observe(x: torch.Tensor) -> torch.Tensor:
        ys = []
        for step in steps:
            x = step(x)
            ys.append(op(x))
        return torch.stack(ys, 1)
    return observe


def check_lag(forecast, ensemble: torch.Tensor, operator, lag, domains, prior) -> None:
    """ValueError for a ``lag`` that is not an integer >= 1 or a forecast that torch cannot differentiate;
    TypeError for ``lag > 1`` with ``domains`` or ``prior`` (the lagged analysis is the global one)."""
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
        raise ValueError(f"lag must be an integer >= 1 (observation times per analysis window), got {lag!r}")
    if domains is not None or prior is not None:
        raise TypeError("lag > 1 runs the global analysis over a window; it does not go with "
                        f"{'domains=' if domains is not None else 'prior='}")
    x = ensemble[:2].to(torch.float64).clone().requires_grad_(True)
    try:
        y = window_operator(forecast, operator, 1)(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
    except Exception as exc:
        raise ValueError(f"lag={lag} differentiates the observations through the forecast, but forecast "
                         f"{forecast!r} cannot be differentiated in torch (float64): {exc}") from exc
    if not bool(torch.isfinite(grad).all()):
        raise ValueError(f"lag={lag}: the gradient of the observations through forecast {forecast!r} is not finite")


def window_analysis(start: torch.Tensor, window: list, operator, y: torch.Tensor, std: torch.Tensor, generator,
                    options: dict) -> tuple[torch.Tensor, float]:
    """The members ``start`` at the window's start drawn given the window's observations ``y`` ``(k, *obs)``
    seen through the ``k`` forecasts of ``window`` (:func:`window_operator`), and the wall seconds."""
    clock = time.perf_counter()
    x = analyse(start, window_operator(window, operator, len(window)), y, std, None, None, generator, options)
    return x, time.perf_counter() - clock


def lagged_analysis(start: torch.Tensor, window: list, operator, y: torch.Tensor, std: torch.Tensor, generator,
                    options: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One lagged analysis: the members ``start`` at the window's start drawn given the window's observations
    ``y`` ``(k, *obs)`` seen through the ``k`` forecasts of ``window`` (:func:`window_operator`), then both
    carried through them. Returns the forecast and the analysis at the window's end, and the analysis'
    wall seconds."""
    x, seconds = window_analysis(start, window, operator, y, std, generator, options)
    with torch.no_grad():
        xf = start
        for step in window:
            xf, x = step(xf), step(x)
    return xf, x, seconds


def _lagged(forecast, ensemble, operator, observations, std, lag, generator, callback, options) -> FilterResult:
    """:func:`cycle` with ``lag > 1`` (inputs checked): the analysis at ``t - k`` of the window's
    observations, carried ``k`` steps to ``t``."""
    kept = deque([ensemble], maxlen=lag)  # the analyses of times t - lag .. t - 1 (the initial one at -1)
    record = _Recorder(callback)
    for t in range(observations.shape[0]):
        k = min(lag, t + 1)
        xf, x, seconds = lagged_analysis(kept[-k], [forecast] * k, operator, observations[t - k + 1:t + 1],
                                         std[t - k + 1:t + 1], generator, options)
        kept.append(x)
        record(t, xf, x, seconds)
    return record.result()


def tempered_noise(y: torch.Tensor, std: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations ``(k, *obs)`` used with ``weight`` ``(k,)`` in [0, 1]: the likelihood raised to that
    power, i.e. the noise std divided by ``sqrt(weight)``; an observation of weight 0 is missing (NaN)."""
    w = weight.to(torch.float64).reshape(-1, *([1] * (y.ndim - 1)))
    used = w > 0
    y = torch.where(used, y.to(torch.float64), torch.full_like(y, float("nan"), dtype=torch.float64))
    return y, torch.where(used, std / w.clamp_min(1e-300).sqrt(), std)


def mda_weights(t: int, lag: int) -> tuple[int, torch.Tensor, torch.Tensor | None]:
    """The schedule of ``cycle(..., lag=lag, mda=True)`` at cycle ``t``: the chain's time ``s`` (the window
    is the observations ``s + 1 .. t``; -1 is the initial time), each window observation's remaining
    weight ``(t - s,)`` (what the chain has not used: the output's weights), and the weights of the
    chain's step (None while the window is shorter than ``lag``: the chain waits at the initial time).
    An observation ``j`` enters the chain's steps of the cycles ``max(j, lag - 1) .. j + lag - 2`` with
    ``1 / lag`` each and leaves it at cycle ``j + lag - 1`` with all it has left, so its weights add to 1."""
    start = max(-1, t - lag)
    j = torch.arange(start + 1, t + 1)
    remaining = 1.0 - (t - j.clamp(min=lag - 1)).clamp(min=0).to(torch.float64) / lag
    if t - start < lag:
        return start, remaining, None
    weight = remaining.clamp(max=1.0 / lag)
    weight[0] = remaining[0]
    return start, remaining, weight


def mda_analysis(chain: torch.Tensor, window: list, operator, y: torch.Tensor, std: torch.Tensor,
                 remaining: torch.Tensor, weight: torch.Tensor | None, generators, options: dict,
                 chain_options: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One cycle of multiple data assimilation from the ``chain`` members at the window's start: the
    output's lagged analysis with the ``remaining`` weights (``generators[0]``, ``options``) and, with
    ``weight``, the chain's with those (``generators[1]``, ``chain_options``), carried by ``window[0]``.
    Returns the forecast and analysis at the window's end, the chain (moved one time forward, or as it
    was), and the wall seconds of the analyses."""
    y_out, noise = tempered_noise(y, std, remaining)
    xf, x, seconds = lagged_analysis(chain, window, operator, y_out, noise, generators[0], options)
    if weight is not None:
        y_chain, noise = tempered_noise(y, std, weight)
        step, chain_seconds = window_analysis(chain, window, operator, y_chain, noise, generators[1], chain_options)
        seconds += chain_seconds
        with torch.no_grad():
            chain = window[0](step)
    return xf, x, chain, seconds


def _tempered(forecast, ensemble, operator, observations, std, lag, generator, callback, options,
              mda_inflation) -> FilterResult:
    """:func:`cycle` with ``lag > 1`` and ``mda=True`` (inputs checked), by the schedule of
    :func:`mda_weights`: each cycle the output analysis gives each window observation its remaining
    weight and is carried to ``t``; once the window is ``lag`` long the chain's analysis gives each
    ``1 / lag`` (the window's first, which then leaves it, all it has left) and is carried one time
    forward. For a linear model without noise and a Gaussian prior both are exact Kalman posteriors:
    tempered Gaussian likelihoods multiply to the untempered one."""
    chain, chain_options = ensemble, {**options, "inflation": mda_inflation}
    record = _Recorder(callback)
    for t in range(observations.shape[0]):
        start, remaining, weight = mda_weights(t, lag)
        window = slice(start + 1, t + 1)
        xf, x, chain, seconds = mda_analysis(chain, [forecast] * (t - start), operator, observations[window],
                                             std[window], remaining, weight, (generator, generator), options,
                                             chain_options)
        record(t, xf, x, seconds)
    return record.result()
