r"""The local analysis in ensemble space: each domain's diffusion runs on ``N`` weights, not its window.

Without a covariance taper the window prior of :func:`~sciffusion.assimilate.local_analysis` lives
on the affine span of the members: every state it can produce is
:math:`x = \bar x + A w / \sqrt{N - 1}` with ``A`` the ``(d, N)`` (inflated) anomalies and
``w`` in :math:`R^N`, as in the LETKF (Hunt et al. 2007). In these weights the ensemble prior of
:func:`~sciffusion.assimilate.ensemble_prior` is the same for every domain: the Gaussian-kernel
mixture

.. math::
    p(w) = \frac1N \sum_i N\big(a \sqrt{N - 1}\,(e_i - \tfrac1N \mathbf 1),\ h^2 I_N\big),\qquad a = \sqrt{(1 - h^2) N / (N - 1)},

whose push-forward through ``A / sqrt(N - 1)`` is that window prior (bandwidth ``h = 1``: the
Gaussian fit, ``w ~ N(0, I)``; member ``i`` sits at :math:`\sqrt{N-1}(e_i - \mathbf 1 / N)`).
The observation of domain ``k`` reads only its observed entries,
:math:`f(\bar x_o + A_o w / \sqrt{N - 1})`, so a denoiser call costs O(N^2) per row instead of the
state-space window's O(w^2), whatever the localisation radius: the radius no longer sets the cost,
only the number of observations a domain sees. The analysed block is
:math:`\bar x_b + A_b w^a / \sqrt{N - 1}`.

With ``h = 1``, a linear observation and the member transport (``start="members"``) in the limit
of fine steps, the analysis is the LETKF's: weights :math:`\bar w^a + P_a^{1/2} w_i`, with
:math:`P_a = (I + Y^T R^{-1} Y)^{-1}`, :math:`Y = H A / \sqrt{N-1}` and the R-localised
:math:`R^{-1}` (``tests/test_assimilate_ensemble_space.py`` checks this against the closed form).
``h < 1`` makes the prior a mixture, so the analysis reweights members by the observations as a
particle filter does while moving them as the Kalman update does. A covariance taper
(B-localisation) has no ensemble-space form: ``space="ensemble"`` refuses domains that carry one.
"""

from __future__ import annotations

import torch

from sciffusion.diffusion import heun_step, karras_sigmas
from sciffusion.inverse import Function
from sciffusion.inverse import sample as posterior_sample


class WeightPrior:
    """The ensemble prior in the weights of ``n`` members (module docstring): an exact, differentiable
    denoiser on rows ``(B, n)``, the same for every domain."""

    def __init__(self, n: int, bandwidth: float = 1.0, dtype=torch.float64, device=None):
        self.n, self.h2 = int(n), float(bandwidth) ** 2
        a = ((1 - self.h2) * n / (n - 1)) ** 0.5
        eye = torch.eye(n, dtype=dtype, device=device)
        self.means = None if bandwidth == 1.0 else a * (n - 1) ** 0.5 * (eye - 1.0 / n)  # (C = n, n)
        self.event_shape = (self.n,)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        var = (self.h2 + (s.expand(x.shape[0]) if s.numel() == 1 else s) ** 2)[:, None]  # (B, 1)
        if self.means is None:
            return x * (self.h2 / var)
        means = self.means.to(x)
        diff = x[:, None] - means  # (B, C, n)
        r = torch.softmax(-0.5 * (diff**2).sum(-1) / var, dim=-1)  # equal weights, shared covariance
        return (r[..., None] * (means + (self.h2 / var)[:, :, None] * diff)).sum(1)


def ensemble_space_analysis(x: torch.Tensor, domains, y_loc: torch.Tensor, coef: torch.Tensor, std,
                            active: torch.Tensor, *, function=None, bandwidth: float = 1.0, inflation: float = 1.0,
                            guidance: str = "mmps", sampler: str | None = "heun", steps: int = 16,
                            sigma_max: float = 20.0, sigma_min: float = 0.002, start: str = "members",
                            generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """The analysed flat members ``(N, d)`` of :func:`~sciffusion.assimilate.local_analysis` with
    ``space="ensemble"``; its arguments already checked and localised there (``y_loc``, ``coef``:
    ``(K, m)`` observations and ``sqrt(weight) / std`` factors of each domain's slots, ``std`` the
    common noise std or 1 when ``coef`` holds it, ``active``: the domains with an observation)."""
    if domains.taper is not None:
        raise ValueError("space='ensemble' cannot apply Domains.taper (a covariance taper has no ensemble-space "
                         "form); build the domains without taper_radius, or use space='state'")
    n, k = x.shape[0], domains.windows.shape[0]
    mean = x.mean(0)
    anom = (x - mean) * (float(inflation) / (n - 1) ** 0.5)  # (N, d): x = mean + w @ anom
    read = domains.windows.gather(1, domains.obs_pos)  # (K, m) state index of each slot
    obs_mean, obs_anom = mean[read], anom[:, read].permute(1, 0, 2)  # (K, m), (K, N, m)
    prior = WeightPrior(n, bandwidth, dtype=x.dtype, device=x.device)
    sigmas = karras_sigmas(steps, sigma_min, sigma_max).to(torch.float64)
    if start == "members":  # member i at sqrt(N - 1) (e_i - 1/N) in every domain, up the prior's ODE
        z = ((n - 1) ** 0.5 * (torch.eye(n, dtype=x.dtype, device=x.device) - 1.0 / n))
        z = z[:, None].expand(n, k, n).reshape(n * k, n)
        up = sigmas[:-1].flip(0)  # Heun on the levels the way down uses: its errors cancel on the round trip
        for lo, hi in zip(up[:-1], up[1:]):  # (an exact up-scaling at h = 1 was 5-15x further off)
            z = heun_step(prior, z, lo, hi, noise=None, cond={})
        options["x"] = z

    def observe(w: torch.Tensor) -> torch.Tensor:  # rows (B, N) -> weighted residuals (B, m)
        if w.shape[0] % k:  # a probe of the operator
            win = torch.arange(w.shape[0], device=w.device) % k
            vals = obs_mean[win] + torch.einsum("bn,bnm->bm", w, obs_anom[win])
            f = vals if function is None else function(vals)
            return (f - y_loc[win]) * coef[win]
        vals = obs_mean + torch.einsum("ikn,knm->ikm", w.reshape(-1, k, n), obs_anom)
        f = vals if function is None else function(vals)
        return ((f - y_loc) * coef).reshape(w.shape[0], -1)

    zero = torch.zeros(read.shape[1], dtype=torch.float64, device=x.device)
    wa = posterior_sample(prior, Function(observe), zero, noise_std=std, sampler=sampler, n_members=n * k,
                          sigmas=sigmas, generator=generator, event_shape=(n,), dtype=torch.float64,
                          device=x.device, guidance=guidance, **options).reshape(n, k, n)
    out = x.clone()
    sizes = domains.keep.sum(1)
    if bool((sizes == sizes[0]).all()):  # equal blocks (every periodic layout): one batched product
        kept = domains.windows[domains.keep].reshape(k, -1)  # (K, b)
        upd = mean[kept] + torch.einsum("ikc,ckb->ikb", wa, anom[:, kept])
        out[:, kept.reshape(-1)] = torch.where(active[None, :, None], upd, x[:, kept]).reshape(n, -1)
        return out
    for j in torch.nonzero(active).flatten().tolist():  # blocks of different sizes: one domain at a time
        idx = domains.windows[j][domains.keep[j]]
        out[:, idx] = mean[idx] + wa[:, j] @ anom[:, idx]
    return out
