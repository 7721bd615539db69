r"""Twisted sequential Monte Carlo: weighted particle ensembles that are exact as they grow.

The target is the path of a DDPM-type chain of the prior reweighted by the likelihood of its
endpoint. Between noise levels ``sigma > sigma'``, with ``k = sigma'^2 / sigma^2``, the prior kernel is

.. math::
    p(x' \mid x) = N\big(m,\ c^2 I\big),\quad m = D + k (x - D),\quad
    c^2 = \sigma'^2 (1 - k) + (1 - k)^2 v ,

the exact transition when ``x0 | x ~ N(D, v I)``; ``v`` is the Tweedie variance
:math:`\sigma^2 \operatorname{tr}(\partial_x D)/d` by default (``kernel``; its random probe is part of
the chain, for which SMC stays exact; ``v = 0`` is DDIM with ``eta = 1``). The particles follow
the twisted proposal of TDS (Wu et al. 2023),
:math:`q(x' \mid x) = N(m + c^2 \nabla_x \ell_\sigma(x),\ c^2 I)`, with the twist
:math:`\ell_\sigma(x) = \log N\big(y;\ A(D(x,\sigma)),\ R + r_\sigma^2\,\mathrm{diag}(AA^T)\big)`,
:math:`r_\sigma^2 = \sigma^2\sigma_d^2/(\sigma^2+\sigma_d^2)`. The incremental weight is

.. math::
    w = \frac{p(x' \mid x)\, e^{\ell_{\sigma'}(x')}}{q(x' \mid x)\, e^{\ell_\sigma(x)}},\qquad
    \log\frac{p}{q} = -c\, z\cdot\nabla\ell_\sigma(x) - \tfrac{c^2}{2}\|\nabla\ell_\sigma(x)\|^2 ,

and the last step (to ``sigma = 0``, ``x_0 = D(x)``) uses the exact likelihood
:math:`p(y \mid x_0)`. The twists telescope, so whatever the twist the weighted particles target
the exact posterior of the discretised prior as the number of particles grows (Del Moral 2004;
the twist only sets the variance). Particles are resampled (systematic) when the effective
sample size drops below ``ess_threshold * N``; the product of the mean incremental weights is
an unbiased estimate of the evidence :math:`p(y)` (its log is reported). Independent runs are
batched: ``n_members`` draws come from ``ceil(n_members / particles)`` runs, each
resampled once more at the end to equally weighted particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sciffusion._deprecate import renamed_keywords
from sciffusion.inverse.operators import Observation


KERNELS = ("tweedie", "gaussian", "ddpm")


@dataclass
class SMCResult:
    """Equally weighted ``samples (n_members, *event)``; ``ess (steps + 1, runs)`` effective
    sample size after each reweighting (before resampling; the last row is after the exact
    likelihood of the final step); ``log_z (runs,)`` log-evidence estimates;
    ``resampled`` the step indices where any run resampled; ``nfe`` denoiser calls per particle."""

    samples: torch.Tensor
    ess: torch.Tensor
    log_z: torch.Tensor
    particles: int
    resampled: list[int] = field(default_factory=list)
    nfe: int = 0


def systematic_resample(log_w: torch.Tensor, generator=None) -> torch.Tensor:
    """Indices ``(R, N)`` drawn by systematic resampling from normalised log-weights ``(R, N)``."""
    r, n = log_w.shape
    cdf = torch.cumsum(torch.softmax(log_w, dim=1), dim=1)
    cdf[:, -1] = 1.0
    u = torch.rand(r, 1, generator=generator, dtype=cdf.dtype, device=cdf.device)
    pos = (u + torch.arange(n, dtype=cdf.dtype, device=cdf.device)[None]) / n
    return torch.searchsorted(cdf, pos).clamp_max(n - 1)


@renamed_keywords(num_samples="n_members")
def twisted_smc(denoiser, observation: Observation, sigmas: torch.Tensor, *, n_members: int,
                particles: int | None = None, ess_threshold: float = 0.5, sigma_data: float | None = None,
                generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, twist: str = "auto",
                kernel: str = "tweedie", **cond) -> SMCResult:
    """Run batched twisted SMC over the noise levels ``sigmas`` (decreasing, ending in 0).

    Args:
        denoiser: ``denoiser(x, sigma, **cond)`` of the prior.
        observation: the :class:`~sciffusion.inverse.operators.Observation` (noise std > 0).
        n_members: equally weighted output samples (``num_samples=``: deprecated alias).
        particles: particles per run (default ``n_members``: one run).
        ess_threshold: resample when ESS < ``ess_threshold * particles`` (1 = every step).
        sigma_data: prior scale in the twist variance (default the denoiser's, else 1).
        twist: ``"pigdm"`` (isotropic ``r^2`` variance, above), ``"mmps"`` (the moment-matched
            variance ``R + A (sigma^2 J) A^T``, formed with one VJP per observation, and the MMPS
            guidance as drift; needs a linear operator) or ``"auto"`` (mmps for <= 16 observations).
        kernel: the prior chain, ``v`` above. ``"tweedie"``: ``v`` from the denoiser's own Tweedie
            covariance, ``sigma^2 tr(J) / d`` by one Rademacher probe (one VJP) per particle and
            step; ``"gaussian"``: ``v = r_sigma^2``, exact for a Gaussian prior of variance
            ``sigma_data^2``; ``"ddpm"``: ``v = 0``, which under-disperses at finite step counts.
            SMC is exact for the chain it runs, so this choice is its discretisation error; on
            validation mixtures (``benchmarks/results/posterior_gmm_validation.json``) the
            Tweedie kernel matched ``"gaussian"`` without knowing the component scale, and
            ``"ddpm"`` was 1.4x worse.
    """
    n = int(particles or n_members)
    runs = math.ceil(n_members / n)
    b = runs * n
    shape = (b, *observation.event_shape)
    sd = float(sigma_data if sigma_data is not None else getattr(denoiser, "sigma_data", 1.0))
    dev = observation.device
    gram = observation.gram_diag().to(dtype)
    sigmas = torch.as_tensor(sigmas, dtype=dtype).to(dev)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    rows = None
    if twist == "mmps" or (twist == "auto" and observation.operator.linear and observation.num_observed <= 16):
        rows = _adjoint_rows(observation, dtype)
    elif twist not in ("auto", "pigdm"):
        raise ValueError(f"twist must be 'auto', 'mmps' or 'pigdm', got {twist!r}")
    x = sigmas[0] * torch.randn(shape, generator=generator, dtype=dtype, device=dev)
    log_w = torch.full((runs, n), -math.log(n), dtype=torch.float64, device=dev)
    log_z = torch.zeros(runs, dtype=torch.float64, device=dev)
    pending = torch.zeros(b, dtype=torch.float64, device=dev)
    ess_trace, resampled = [], []

    def reweight(incr):
        nonlocal log_w, log_z
        log_w = log_w + incr.reshape(runs, n)
        lse = torch.logsumexp(log_w, dim=1)
        log_z = log_z + lse
        log_w = log_w - lse[:, None]
        ess = 1.0 / torch.exp(torch.logsumexp(2 * log_w, dim=1))
        ess_trace.append(ess)
        return ess

    def gather(t, idx):
        flat = (idx + torch.arange(runs, device=dev)[:, None] * n).reshape(-1)
        return t[flat]

    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        s = sigma.expand(b)
        r2 = sigma**2 * sd**2 / (sigma**2 + sd**2)
        cov = r2 if kernel == "gaussian" else torch.zeros((), dtype=dtype, device=dev)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = denoiser(xg, s, **cond)
            if kernel == "tweedie" and sigma_next > 0:  # sigma^2 tr(J) / d from one Rademacher probe v
                v = torch.randint(0, 2, shape, generator=generator, device=dev).to(dtype) * 2 - 1
                (jv,) = torch.autograd.grad(d, xg, v, retain_graph=True)
                cov = (sigma**2 * (v * jv).reshape(b, -1).mean(1)).detach().clamp_min(0)
                cov = cov.reshape(b, *[1] * (len(shape) - 1))
            if rows is None:
                ell = observation.log_likelihood(d, r2 * gram)
                (g,) = torch.autograd.grad(ell.sum(), xg)
            else:
                ell, g = _moment_twist(observation, rows, xg, d, sigma)
        d, ell = d.detach(), ell.detach().to(torch.float64)
        ess = reweight(pending + ell)
        low = ess < ess_threshold * n
        if bool(low.any()) and sigma_next > 0:  # resample the runs whose ESS dropped
            idx = torch.where(low[:, None], systematic_resample(log_w, generator), torch.arange(n, device=dev)[None])
            x, d, ell, g = (gather(t, idx) for t in (x, d, ell, g))
            cov = gather(cov, idx) if cov.ndim else cov
            log_w = torch.where(low[:, None], torch.full_like(log_w, -math.log(n)), log_w)
            resampled.append(i)
        if sigma_next == 0:  # x0 = D(x): exact likelihood replaces the twist
            x = d
            reweight(observation.log_likelihood(d).to(torch.float64) - ell)
            break
        k = sigma_next**2 / sigma**2
        c2 = sigma_next**2 * (1 - k) + (1 - k) ** 2 * cov  # + the spread of x0 | x the DDPM mean ignores
        c = c2.sqrt()
        z = torch.randn(shape, generator=generator, dtype=dtype, device=dev)
        x = d + k * (x - d) + c2 * g + c * z
        log_pq = -(c * z * g).reshape(b, -1).sum(1) - 0.5 * (c2 * g**2).reshape(b, -1).sum(1)
        pending = log_pq.to(torch.float64) - ell
    idx = systematic_resample(log_w, generator)
    x = gather(x, idx)[:n_members]
    return SMCResult(samples=x, ess=torch.stack(ess_trace), log_z=log_z, particles=n, resampled=resampled,
                     nfe=steps)


def _adjoint_rows(observation: Observation, dtype) -> torch.Tensor:
    """``A^T e_j`` for every observed entry ``j``: ``(m, *event)`` (linear operators)."""
    if not observation.operator.linear:
        raise ValueError("twist='mmps' needs a linear operator")
    x = torch.zeros((1, *observation.event_shape), dtype=dtype, device=observation.device, requires_grad=True)
    out = observation.operator(x)[0].reshape(-1)
    idx = torch.nonzero(observation.observed.reshape(-1))[:, 0]
    return torch.stack([torch.autograd.grad(out[j], x, retain_graph=True)[0][0] for j in idx.tolist()])


def _moment_twist(observation: Observation, rows: torch.Tensor, x, d, sigma):
    r"""``log N(y; A D, R + A sigma^2 J A^T)`` and its gradient with the covariance held fixed
    (the MMPS guidance ``J^T A^T C^{-1}(y - A D)``). ``J^T`` is used for ``J`` (symmetric for
    the exact denoiser)."""
    b, m = x.shape[0], rows.shape[0]
    flat_rows = rows.reshape(m, -1)
    vjps = (torch.autograd.grad(d, x, rows[j].expand_as(d), retain_graph=True)[0] for j in range(m))
    cols = [vj.reshape(b, -1) @ flat_rows.T for vj in vjps]  # A (J^T A^T e_j): (B, m)
    sel = observation.observed.reshape(-1)
    var = observation.var.reshape(-1)[sel].to(d.dtype)
    cov = sigma**2 * torch.stack(cols, dim=2)
    cov = (cov + cov.transpose(1, 2)) / 2 + torch.diag(var)[None]
    res = observation.residual(d).reshape(b, -1)[:, sel].detach()
    chol, info = torch.linalg.cholesky_ex(cov.detach())
    if bool((info > 0).any()):  # the VJP-based covariance may lose definiteness: fall back to R
        chol = torch.linalg.cholesky(torch.diag(var)[None].expand(b, m, m))
    u = torch.cholesky_solve(res[..., None], chol)[..., 0]
    ell = -0.5 * ((res * u).sum(1) + 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
                  + m * math.log(2 * math.pi))
    (g,) = torch.autograd.grad(d, x, (u @ flat_rows).reshape(d.shape))
    return ell.detach(), g
