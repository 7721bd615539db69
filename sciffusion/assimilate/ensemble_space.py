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

from sciffusion.assimilate.adaptive import enkf_n_inflation
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


class LinearPosterior:
    r"""The exact posterior denoiser of :class:`WeightPrior` given linear observations, per domain.

    Domain ``k`` observes :math:`b_k = A_k w_0 + e`, :math:`e \sim N(0, I)` (``design``: ``(K, N, m)``
    the whitened :math:`A_k^T`, ``data``: ``(K, m)`` the whitened :math:`b_k`; padding slots all 0).
    Each prior component :math:`N(\mu_c, h^2 I)` with :math:`w_t = w_0 + \sigma \epsilon` is
    jointly Gaussian with :math:`(w_t, b_k)`, so, with the shared precision
    :math:`P = (h^{-2} + \sigma^{-2}) I + A_k^T A_k` and :math:`\eta_c = \mu_c / h^2 + w_t / \sigma^2 + A_k^T b_k`,

    .. math::
        E[w_0 \mid w_t, b_k] = \sum_c \rho_c P^{-1} \eta_c,\qquad
        \log \rho_c = \tfrac12 \eta_c^T P^{-1} \eta_c - \tfrac{|\mu_c|^2}{2 h^2} + \text{const},

    exactly, at every noise level (no moment matching, no conjugate gradients): at ``h = 1`` the
    probability flow of the LETKF's Gaussian posterior, at ``h < 1`` a Gaussian-mixture filter's
    (components reweighted by their evidence). ``h = 0``: the members themselves, reweighted.
    One ``(N, N)`` eigendecomposition per domain, then O(C N^2) per row and call. Rows ``(B, N)``:
    row ``r`` in domain ``r % K``, as everywhere in :func:`~sciffusion.assimilate.local_analysis`.
    """

    def __init__(self, prior: WeightPrior, design: torch.Tensor, data: torch.Tensor):
        self.prior, self.k, self.n = prior, design.shape[0], prior.n
        self.event_shape = prior.event_shape
        self.lam, self.vec = torch.linalg.eigh(design @ design.transpose(1, 2))  # (K, N), (K, N, N)
        g = torch.einsum("knm,km->kn", design, data)  # A^T b
        self.g = torch.einsum("kn,knj->kj", g, self.vec)  # in each domain's eigenbasis
        if prior.means is not None:
            means = prior.means.to(design)
            self.mu = torch.einsum("cn,knj->kcj", means, self.vec)  # (K, C, N)
            self.mu2 = (means**2).sum(-1)  # (C,)
            self.design, self.data = design, data

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if bool((s != s[0]).any()):
            raise ValueError("LinearPosterior takes one noise level for all rows (the ODE samplers' form)")
        s2 = float(s[0]) ** 2
        h2 = self.prior.h2
        xu = torch.einsum("ikn,knj->ikj", x.reshape(-1, self.k, self.n), self.vec)  # (I, K, N) eigenbasis
        if self.prior.means is None:  # h = 1: one component at 0
            d = (xu / s2 + self.g) / (1.0 + 1.0 / s2 + self.lam)
        elif h2 == 0:  # the members themselves: weights from the noise level and the evidence
            fit = ((torch.einsum("cn,knm->kcm", self.prior.means.to(x), self.design) - self.data[:, None]) ** 2).sum(-1)
            logit = -0.5 * ((xu[:, :, None] - self.mu[None]) ** 2).sum(-1) / s2 - 0.5 * fit[None]  # (I, K, C)
            d = torch.einsum("ikc,kcj->ikj", torch.softmax(logit, -1), self.mu)
        else:
            eta = self.mu[None] / h2 + (xu / s2 + self.g)[:, :, None]  # (I, K, C, N)
            inv = 1.0 / (1.0 / h2 + 1.0 / s2 + self.lam)[None, :, None]  # (1, K, 1, N)
            logit = 0.5 * (eta**2 * inv).sum(-1) - 0.5 * self.mu2.to(x) / h2
            d = (torch.softmax(logit, -1)[..., None] * eta * inv).sum(2)
        return torch.einsum("ikj,knj->ikn", d, self.vec).reshape(x.shape)

    def flow(self, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """Heun's probability-flow ODE down ``sigmas`` from rows ``x`` (``(B, N)``, row ``r`` in domain
        ``r % K``): the same numbers as a loop of :func:`~sciffusion.diffusion.heun_step` over this
        denoiser. At ``h = 1`` the denoiser is affine and diagonal in each domain's eigenbasis, so the
        whole loop is one affine map per eigen-coordinate, composed step by step on ``(K, N)``
        coefficients and applied once (two ``(N, N)`` products per row in all, not two per call)."""
        if self.prior.means is not None:
            for hi, lo in zip(sigmas[:-1], sigmas[1:]):
                x = heun_step(self, x, hi, lo, noise=None, cond={})
            return x
        scale, shift = torch.ones_like(self.lam), torch.zeros_like(self.g)  # x = scale * x0 + shift

        def slope(s):  # dx/dsigma = p x + q for D = a x + b, a = 1 / (1 + s^2 (1 + lam))
            s2 = float(s) ** 2
            den = 1.0 + s2 * (1.0 + self.lam)
            return (1.0 - 1.0 / den) / float(s), -(self.g * s2 / den) / float(s)

        for hi, lo in zip(sigmas[:-1], sigmas[1:]):
            step = float(lo) - float(hi)
            p, q = slope(hi)
            if float(lo) == 0:  # Euler to zero, as heun_step
                c, e = 1.0 + step * p, step * q
            else:
                p2, q2 = slope(lo)
                c = 1.0 + step / 2 * (p + p2 * (1.0 + step * p))
                e = step / 2 * (q + p2 * step * q + q2)
            scale, shift = c * scale, c * shift + e
        xu = torch.einsum("ikn,knj->ikj", x.reshape(-1, self.k, self.n), self.vec)
        return torch.einsum("ikj,knj->ikn", scale * xu + shift, self.vec).reshape(x.shape)


def domain_enkf_n(x: torch.Tensor, read: torch.Tensor, y_loc: torch.Tensor, coef: torch.Tensor, std,
                  weight: torch.Tensor | None, enkf_n: float, *, function=None, inflation: float = 1.0) -> torch.Tensor:
    """Each domain's EnKF-N inflation ``(K,)`` (:func:`~sciffusion.assimilate.adaptive.enkf_n_inflation`,
    ``x_n = enkf_n``) from flat members ``x (N, d)``, the state index ``read (K, m)`` of every slot, the
    observations ``y_loc`` and factors ``coef = sqrt(weight) / std`` of :func:`local_analysis`: estimated on
    the observed values ``f(x_i)`` (DAPPER's ``Obs(E)``) of the slots of positive ``weight``, untapered, after
    the fixed ``inflation``."""
    if weight is None:
        raise ValueError("enkf_n needs the domains' localisation weights (weight=)")
    n = x.shape[0]
    vals = x[:, read] if function is None else function(x[:, read])  # (N, K, m)
    f_mean = vals.mean(0)
    whiten = torch.where(weight > 0, coef / weight.clamp_min(1e-300).sqrt() / std, 0.0)  # 1 / std_j, untapered
    f_anom = ((vals - f_mean) * (float(inflation) / (n - 1) ** 0.5)).permute(1, 0, 2)
    return enkf_n_inflation((n - 1) ** 0.5 * f_anom * whiten[:, None], (y_loc - f_mean) * whiten, enkf_n)


def ensemble_space_analysis(x: torch.Tensor, domains, y_loc: torch.Tensor, coef: torch.Tensor, std,
                            active: torch.Tensor, *, function=None, bandwidth: float = 1.0, inflation: float = 1.0,
                            guidance: str = "mmps", sampler: str | None = "heun", steps: int = 16,
                            sigma_max: float = 20.0, sigma_min: float = 0.002, start: str = "members",
                            generator: torch.Generator | None = None, enkf_n: float | None = None,
                            weight: torch.Tensor | None = None, **options) -> torch.Tensor:
    """The analysed flat members ``(N, d)`` of :func:`~sciffusion.assimilate.local_analysis` with
    ``space="ensemble"``; its arguments already checked and localised there (``y_loc``, ``coef``:
    ``(K, m)`` observations and ``sqrt(weight) / std`` factors of each domain's slots, ``std`` the
    common noise std or 1 when ``coef`` holds it, ``active``: the domains with an observation).
    ``enkf_n``: multiply each domain's anomalies by its EnKF-N inflation
    (:func:`~sciffusion.assimilate.adaptive.enkf_n_inflation` with ``x_n = enkf_n``, estimated on the
    slots of positive localisation ``weight``, untapered, after ``inflation``)."""
    if domains.taper is not None:
        raise ValueError("space='ensemble' cannot apply Domains.taper (a covariance taper has no ensemble-space "
                         "form); build the domains without taper_radius, or use space='state'")
    n, k = x.shape[0], domains.windows.shape[0]
    mean = x.mean(0)
    anom = (x - mean) * (float(inflation) / (n - 1) ** 0.5)  # (N, d): x = mean + w @ anom
    read = domains.windows.gather(1, domains.obs_pos)  # (K, m) state index of each slot
    obs_mean, obs_anom = mean[read], anom[:, read].permute(1, 0, 2)  # (K, m), (K, N, m)
    infl = None
    if enkf_n is not None:  # per-domain adaptive inflation, on the observed values f(x_i) as DAPPER's Obs(E)
        infl = domain_enkf_n(x, read, y_loc, coef, std, weight, enkf_n, function=function, inflation=inflation)
        obs_anom = obs_anom * infl[:, None, None]
    prior = WeightPrior(n, bandwidth, dtype=x.dtype, device=x.device)
    sigmas = karras_sigmas(steps, sigma_min, sigma_max).to(torch.float64)
    if start == "members":  # member i at sqrt(N - 1) (e_i - 1/N) in every domain, up the prior's ODE
        z = ((n - 1) ** 0.5 * (torch.eye(n, dtype=x.dtype, device=x.device) - 1.0 / n))
        up = sigmas[:-1].flip(0)  # Heun on the levels the way down uses: its errors cancel on the round trip
        for lo, hi in zip(up[:-1], up[1:]):  # (an exact up-scaling at h = 1 was 5-15x further off)
            z = heun_step(prior, z, lo, hi, noise=None, cond={})  # the prior is every domain's: once, then copied
        options["x"] = z[:, None].expand(n, k, n).reshape(n * k, n)

    if guidance == "exact":  # linear observations: the posterior denoiser in closed form, no guidance
        if function is not None:
            raise ValueError("guidance='exact' needs linear observations (function=None); a nonlinear function "
                             "needs a guidance method such as 'mmps'")
        if sampler != "heun" or options.keys() - {"x"}:
            raise ValueError(f"guidance='exact' (the default in ensemble space with linear observations) runs the "
                             f"Heun ODE and takes no other options; got sampler={sampler!r} and "
                             f"{sorted(options.keys() - {'x'})}: pass guidance='mmps' to use them")
        design = obs_anom * (coef / std)[:, None]  # (K, N, m) whitened A^T
        post = LinearPosterior(prior, design, coef * (y_loc - obs_mean) / std)
        z = options.get("x")
        if z is None:
            z = sigmas[0] * torch.randn(n * k, n, generator=generator, dtype=x.dtype, device=x.device)
        return _update(x, domains, post.flow(z, sigmas).reshape(n, k, n), mean, anom, active, infl)

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
    return _update(x, domains, wa, mean, anom, active, infl)


def _update(x, domains, wa, mean, anom, active, infl=None) -> torch.Tensor:
    """The analysed members: each active domain's block ``mean + wa @ (infl * anom)``, the others kept."""
    n = wa.shape[0]
    out = x.clone()
    kept = domains.blocks()  # (K, b)
    if infl is not None:  # the domain's inflation scales its weights' map to the state
        wa = wa * infl[None, :, None]
    if kept is not None:  # equal blocks (every periodic layout): one batched product
        upd = mean[kept] + torch.einsum("ikc,ckb->ikb", wa, anom[:, kept])
        out[:, kept.reshape(-1)] = torch.where(active[None, :, None], upd, x[:, kept]).reshape(n, -1)
        return out
    for j in torch.nonzero(active).flatten().tolist():  # blocks of different sizes: one domain at a time
        idx = domains.windows[j][domains.keep[j]]
        out[:, idx] = mean[idx] + wa[:, j] @ anom[:, idx]
    return out
