r"""The analysis step: a posterior sampler of :mod:`sciffusion.inverse` whose prior is the forecast ensemble.

The prior is training-free (EnSF-style, Bao et al. 2024): an exact denoiser built from the
forecast ensemble ``x_1..x_N`` with mean :math:`\bar x` and (inflated, optionally localised)
sample covariance :math:`S`. It is the Gaussian-kernel mixture

.. math::
    p(x_0) = \frac1N \sum_i N\big(\bar x + a (x_i - \bar x),\ h^2 S\big),\qquad a = \sqrt{(1 - h^2) N / (N - 1)},

whose mean and covariance are those of the ensemble for every bandwidth ``h`` in ``[0, 1]``
(the shrinkage ``a`` is West's, 1993; a taper localises only the kernel part ``h^2 S``):
``h = 1`` is the Gaussian fitted to the ensemble (with a
linear operator the analysis then samples the Kalman posterior of that Gaussian), ``h -> 0`` the
empirical distribution of the members (EnSF's score). Its exact denoiser is
:class:`sciffusion.testing.GaussianMixture`'s. ``inflation`` multiplies the anomalies,
``localization`` is a ``(d, d)`` taper applied to :math:`S` by a Schur product (e.g.
:func:`gaspari_cohn`), which also makes :math:`S` full rank.

The sampler runs in normalised coordinates :math:`z = (x - \bar x) / s` with ``s`` the RMS
ensemble spread, so the noise levels are set relative to the spread and not to the state's
magnitude; a linear operator stays linear there (``y`` is shifted by :math:`A\bar x` and scaled).

``start="members"`` (default) makes the analysis a deterministic transport of the members: each
forecast member is carried to the top noise level by the prior's probability-flow ODE (Heun,
the same noise levels upwards) and brought back down by the posterior sampler. For a Gaussian
prior, a linear operator and the ODE sampler this is a square-root filter,
:math:`x^a_i = \bar x^a + P_a^{1/2} S^{-1/2}(x_i - \bar x)` in the limit of fine steps, so the
analysis ensemble has exactly the Kalman mean and covariance of its prior; ``start="noise"``
draws fresh posterior samples instead, whose sampling error in the covariance (of N draws) makes a
cycled filter with few members collapse without strong inflation (measured: docs/assimilation.md).
"""

from __future__ import annotations

import math

import torch

from sciffusion.diffusion import heun_step, karras_sigmas
from sciffusion.inverse import Function, as_operator
from sciffusion.inverse import sample as posterior_sample
from sciffusion.testing import GaussianMixture

def gaspari_cohn(distance: torch.Tensor, radius: float) -> torch.Tensor:
    r"""The compactly supported 5th-order taper of Gaspari & Cohn (1999, eq. 4.10), 0 beyond ``2 * radius``.

    ``distance`` any shape (e.g. a ``(d, d)`` matrix of grid distances); ``radius`` the half-width
    ``c`` (the taper is 1 at 0 and about 0.21 at ``c``)."""
    r = torch.as_tensor(distance, dtype=torch.float64).abs() / float(radius)
    near = (((-0.25 * r + 0.5) * r + 0.625) * r - 5 / 3) * r**2 + 1
    far = ((((r / 12 - 0.5) * r + 0.625) * r + 5 / 3) * r - 5) * r + 4 - 2 / (3 * r.clamp_min(1e-12))
    return torch.where(r <= 1, near, torch.where(r < 2, far, torch.zeros_like(r)))


METRICS = ("arc", "chord")


def ring_taper(n: int, radius: float, *, metric: str = "arc") -> torch.Tensor:
    r"""Gaspari-Cohn taper ``(n, n)`` between the points of a periodic ring of ``n`` (e.g. Lorenz-96's variables).

    ``metric="arc"`` (default): the periodic index distance ``min(|i - j|, n - |i - j|)``. Gaspari-Cohn is a
    correlation function in Euclidean space of up to 3 dimensions, not on the circle's arc length: on a ring
    of 40 its taper has negative eigenvalues beyond a radius of about 11 (-0.002 at 12, -0.10 at 16), and a
    tapered covariance is then no covariance. ``metric="chord"``: the chordal distance
    ``n / pi * sin(pi * arc / n)`` (equal to the arc distance for near neighbours), the distance of the ring
    embedded in the plane, where the taper is positive semi-definite at every radius.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    i = torch.arange(int(n), dtype=torch.float64)
    d = (i[:, None] - i[None]).abs()
    arc = torch.minimum(d, n - d)
    return gaspari_cohn(arc if metric == "arc" else n / math.pi * torch.sin(math.pi * arc / n), radius)


def ensemble_prior(ensemble: torch.Tensor, *, bandwidth: float = 1.0, inflation: float = 1.0,
                   localization: torch.Tensor | None = None) -> GaussianMixture:
    """The exact-denoiser prior ``(N, *state) -> GaussianMixture`` of the module docstring.

    Args:
        ensemble: forecast members ``(N, *state)``, ``N >= 2``.
        bandwidth: ``h`` in ``[0, 1]``; 1 (one component) is the Gaussian fit.
        inflation: multiplicative anomaly inflation (>= 1 usually).
        localization: ``(d, d)`` taper, ``d = prod(state)``, or None. A taper that is not positive
            semi-definite (Gaspari-Cohn on a ring's arc distance beyond a radius of about 11) can make
            the tapered covariance indefinite: its negative eigenvalues are then clipped at 0 (the
            nearest covariance), which leaves every tapered covariance that is one unchanged.
    """
    n = ensemble.shape[0]
    if n < 2:
        raise ValueError(f"the forecast ensemble needs at least 2 members, got {n}")
    if not 0.0 <= bandwidth <= 1.0:
        raise ValueError(f"bandwidth must be in [0, 1], got {bandwidth}")
    x = ensemble.reshape(n, -1).to(torch.float64)
    mean = x.mean(0)
    anom = (x - mean) * float(inflation)
    cov = anom.T @ anom / (n - 1)
    if localization is not None:
        loc = torch.as_tensor(localization, dtype=torch.float64, device=cov.device)
        if loc.shape != cov.shape:
            raise ValueError(f"localization must be ({cov.shape[0]}, {cov.shape[0]}) for this state, "
                             f"got {tuple(loc.shape)}")
        cov = cov * loc
    event = tuple(ensemble.shape[1:])
    projected = localization is not None  # a tapered covariance with negative eigenvalues: clipped at 0
    if bandwidth == 1.0:
        return GaussianMixture(torch.ones(1), mean[None], cov[None], event_shape=event, project=projected)
    means = mean + ((1 - bandwidth**2) * n / (n - 1)) ** 0.5 * anom
    return GaussianMixture(torch.ones(n), means, (bandwidth**2 * cov).expand(n, -1, -1), event_shape=event,
                           project=projected)


def analysis(ensemble: torch.Tensor, operator, y: torch.Tensor, *, noise_std, bandwidth: float = 1.0,
             inflation: float = 1.0, localization: torch.Tensor | None = None, guidance: str = "mmps",
             sampler: str | None = "heun", steps: int = 16, sigma_max: float = 20.0, sigma_min: float = 0.002,
             start: str = "members", generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """Analysis ensemble ``(N, *state)``: ``N`` draws of ``p(x | y)`` with the prior :func:`ensemble_prior`.

    Args:
        ensemble: forecast members ``(N, *state)``.
        operator: any :mod:`sciffusion.inverse` operator or differentiable callable ``(B, *state) -> (B, *obs)``.
        y: observations ``obs`` (NaN: missing); all NaN returns the forecast unchanged.
        noise_std: observation noise std: scalar, per channel or per entry.
        bandwidth, inflation, localization: the prior (:func:`ensemble_prior`).
        guidance, sampler, steps, generator, **options: passed to :func:`sciffusion.inverse.sample`
            (``cg_iters`` for ``"mmps"``, ``particles`` for ``"smc"``...). The sampler is Heun's
            ODE by default: with the exact denoiser of a Gaussian its samples have the right
            covariance at 16 steps, where DDIM with ``eta = 1`` (the DDPM kernel) still gives
            ~40% too little variance (it ignores ``Var[x0 | x]`` within a step); None for ``"smc"``.
        sigma_max, sigma_min: the noise levels (``karras_sigmas``), in units of the RMS ensemble spread.
        start: ``"members"`` (transport the forecast members, see the module docstring) or ``"noise"``.
    """
    y = torch.as_tensor(y, dtype=torch.float64)
    if bool(torch.isnan(y).all()):
        return ensemble.clone()
    n, state = ensemble.shape[0], tuple(ensemble.shape[1:])
    x = ensemble.to(torch.float64)
    mean = x.mean(0)
    scale = float(((x - mean) ** 2).sum(0).mean() / (n - 1)) ** 0.5 * float(inflation)
    if scale == 0.0:
        raise ValueError("the forecast ensemble has zero spread: every member is the same state")
    prior = ensemble_prior((x - mean) / scale, bandwidth=bandwidth, inflation=inflation, localization=localization)
    if start not in ("members", "noise"):
        raise ValueError(f"start must be 'members' or 'noise', got {start!r}")
    sigmas = karras_sigmas(steps, sigma_min, sigma_max).to(torch.float64)
    if start == "members":  # the prior's probability-flow ODE upwards, from sigma_min to sigma_max
        z = ((x - mean) * (inflation / scale)).reshape(n, *state)  # the inflated members
        up = sigmas[:-1].flip(0)
        for lo, hi in zip(up[:-1], up[1:]):
            z = heun_step(prior, z, lo, hi, noise=None, cond={})
        options["x"] = z
    op = as_operator(operator)
    if op.linear:  # y - A(mean + s z) = (y - A mean) - s A z
        with torch.no_grad():
            y_op = (y - op(mean[None].to(ensemble.dtype)).to(torch.float64)[0]) / scale
        noise_op = torch.as_tensor(noise_std, dtype=torch.float64) / scale
    else:
        op = Function(lambda z: operator(mean.to(z.dtype) + scale * z))
        y_op, noise_op = y, noise_std
    z = posterior_sample(prior, op, y_op, noise_std=noise_op, sampler=sampler, n_members=n, sigmas=sigmas,
                         generator=generator, event_shape=state, dtype=torch.float64,
                         device=ensemble.device, guidance=guidance, **options)
    return (mean + scale * z).to(ensemble.dtype)
