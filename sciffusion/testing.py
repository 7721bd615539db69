"""Analytic priors with exact denoisers and exact posteriors: the yardstick for every sampler.

A Gaussian mixture ``p(x0) = sum_k w_k N(mu_k, S_k)`` noised as ``x = x0 + sigma * eps`` stays a
mixture, ``p_sigma = sum_k w_k N(mu_k, S_k + sigma^2 I)``, so its optimal denoiser is exact:

    D(x, sigma) = E[x0 | x] = sum_k r_k(x) [mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)],
    r_k(x) ∝ w_k N(x; mu_k, S_k + sigma^2 I)            (log-sum-exp, float64 inside).

Under a linear Gaussian observation ``y = A x0 + n``, ``n ~ N(0, R)``, the posterior is again a
mixture (Kalman form, valid for singular S_k):

    G_k = S_k A^T (A S_k A^T + R)^-1,  mu'_k = mu_k + G_k (y - A mu_k),  S'_k = S_k - G_k A S_k,
    w'_k ∝ w_k N(y; A mu_k, A S_k A^T + R).

Covariances are handled through eigendecompositions ``S_k = Q_k diag(lam_k) Q_k^T`` so each
denoiser call costs O(B K d^2) (O(B K d) for diagonal covariances) for any mix of sigmas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["GaussianMixture", "SlicedWasserstein", "grid_mixture", "mcg_problem", "sliced_wasserstein"]


class GaussianMixture:
    """A Gaussian mixture in ``d`` dimensions with exact EDM denoiser, sampling and posteriors.

    Args:
        weights: ``(K,)`` non-negative, normalised internally.
        means: ``(K, d)``.
        covs: ``(K, d, d)`` full covariances, ``(K, d)`` diagonal variances, a scalar variance
            shared by all (isotropic), or None for identity.
        event_shape: shape of one sample as the denoiser sees it (default ``(d,)``), e.g. ``(1, 8, 8)``.
        project: full covariances with negative eigenvalues are set to their nearest positive
            semi-definite matrix (the eigenvalues clipped at 0) instead of refused with a ValueError
            (e.g. a covariance tapered by a function that is not a valid correlation).

    The object is itself a denoiser: ``mixture(x, sigma)`` with ``x: (B, *event_shape)`` and
    ``sigma`` scalar or ``(B,)`` returns ``E[x0 | x]`` in ``x``'s dtype, computed in float64.
    """

    _iso: torch.Tensor | None = None

    def __init__(self, weights, means, covs=None, event_shape: Sequence[int] | None = None, project: bool = False):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        k, d = self.means.shape
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be ({k},) non-negative with positive sum")
        self.weights = w / w.sum()
        self.d, self.k = d, k
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold d={d} values")
        if covs is None:
            covs = torch.ones(k, d, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 0:
            covs = covs.expand(k, d).clone()
        if covs.shape == (k, d):
            if bool((covs < 0).any()):
                raise ValueError("diagonal variances must be non-negative")
            self.diagonal = True
            self.eigvals, self.eigvecs = covs.clone(), None
            if bool((covs == covs[:, :1]).all()):
                self._iso = covs[:, 0].clone()  # isotropic components: a BLAS fast path
        elif covs.shape == (k, d, d):
            covs = (covs + covs.transpose(1, 2)) / 2
            lam, q = torch.linalg.eigh(covs)
            if not project and bool((lam < -1e-10 * lam.abs().max()).any()):
                raise ValueError("covariances must be positive semi-definite")
            self.diagonal = False
            self.eigvals, self.eigvecs = lam.clamp_min(0), q
        else:
            raise ValueError(f"covs must have shape ({k}, {d}, {d}), ({k}, {d}), a scalar or None; got {tuple(covs.shape)}")

    # ---------------------------------------------------------------- properties
    @property
    def covs(self) -> torch.Tensor:
        """Full covariances ``(K, d, d)``."""
        if self.diagonal:
            return torch.diag_embed(self.eigvals)
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        m = self.mean()
        dev = self.means - m
        return (self.weights[:, None, None] * (self.covs + dev[:, :, None] * dev[:, None, :])).sum(0)

    # ---------------------------------------------------------------- internals
    def _rotate(self, v: torch.Tensor, back: bool = False) -> torch.Tensor:
        """``(B, K, d)`` -> component eigenbasis coordinates ``Q_k^T v`` (``back``: ``Q_k v``, the inverse)."""
        if self.diagonal:
            return v
        return torch.einsum("kij,bkj->bki" if back else "kji,bkj->bki", self.eigvecs, v)

    def _flat(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, *event_shape)`` as float64 rows ``(B, d)`` and ``sigma`` as float64 ``(B,)``."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, the mixture expects {self.event_shape}")
        xf = x.reshape(x.shape[0], self.d).to(torch.float64)
        return xf, torch.as_tensor(sigma, dtype=torch.float64, device=xf.device).expand(xf.shape[0])

    def _terms(self, x: torch.Tensor, sigma: torch.Tensor):
        """Per-component log-likelihoods of noisy x and rotated residuals."""
        var = self.eigvals[None] + (sigma**2)[:, None, None]  # (B, K, d)
        z = self._rotate(x[:, None, :] - self.means[None])  # (B, K, d)
        logp = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1) + self.d * math.log(2 * math.pi))
        return logp + self.weights.log()[None], z, var

    # ---------------------------------------------------------------- public API
    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """``log p_sigma(x)`` for ``x: (B, *event_shape)``; returns ``(B,)`` float64."""
        logp, _, _ = self._terms(*self._flat(x, sigma))
        return torch.logsumexp(logp, dim=1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond) -> torch.Tensor:
        return self.denoise(x, sigma)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Exact ``E[x0 | x0 + sigma eps = x]`` of ``x``'s shape and dtype (differentiable)."""
        xf, s = self._flat(x, sigma)
        if self._iso is not None:
            return self._denoise_isotropic(xf, s).reshape(x.shape).to(x.dtype)
        logp, z, var = self._terms(xf, s)
        r = torch.softmax(logp, dim=1)  # (B, K)
        shrunk = self._rotate(z * self.eigvals[None] / var, back=True)  # S_k (S_k + s^2)^-1 (x - mu_k)
        out = (r[:, :, None] * (self.means[None] + shrunk)).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def _denoise_isotropic(self, xf: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Same as the general path for ``S_k = lam_k I``, in O(B K d) matrix products:
        ``|x - mu_k|^2 = |x|^2 - 2 x.mu_k + |mu_k|^2`` and ``D = sum_k r_k [(1 - c_k) mu_k] + (sum_k r_k c_k) x``
        with ``c_k = lam_k / (lam_k + s^2)``."""
        var = self._iso[None] + (s**2)[:, None]  # (B, K)
        sq = (xf**2).sum(1, keepdim=True) - 2 * xf @ self.means.T + (self.means**2).sum(1)[None]
        logp = self.weights.log()[None] - 0.5 * (sq.clamp_min(0) / var + self.d * var.log())
        r = torch.softmax(logp, dim=1)
        c = self._iso[None] / var
        return (r * (1 - c)) @ self.means + (r * c).sum(1, keepdim=True) * xf

    def denoise_cov(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Exact ``Cov[x0 | x]``: ``sum_k r_k [V_k + (a_k - D)(a_k - D)^T]``, shape ``(B, d, d)`` float64."""
        xf, s = self._flat(x, sigma)
        logp, z, var = self._terms(xf, s)
        r = torch.softmax(logp, dim=1)
        a = self.means[None] + self._rotate(z * self.eigvals[None] / var, back=True)  # (B, K, d)
        dmean = (r[:, :, None] * a).sum(1)
        vlam = self.eigvals[None] * (s**2)[:, None, None] / var  # eigenvalues of V_k, (B, K, d)
        v = torch.diag_embed(vlam) if self.diagonal else torch.einsum("kij,bkj,klj->bkil", self.eigvecs, vlam, self.eigvecs)
        dev = a - dmean[:, None]
        return (r[:, :, None, None] * (v + dev[..., :, None] * dev[..., None, :])).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` exact samples ``(n, *event_shape)``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        z = eps * self.eigvals[comp].sqrt()
        if not self.diagonal:  # rotate by Q_k, one matrix product per component (not an (n, d, d) gather)
            out = torch.empty_like(z)
            for k in torch.unique(comp).tolist():
                sel = comp == k
                out[sel] = z[sel] @ self.eigvecs[k].T
            z = out
        return (self.means[comp] + z).reshape((n,) + self.event_shape).to(dtype)

    def posterior(self, A, y, noise_std) -> "GaussianMixture":
        """Exact posterior mixture given ``y = A x0 + n``.

        Args:
            A: ``(m, d)`` observation matrix.
            y: ``(m,)`` observation.
            noise_std: scalar, ``(m,)`` per-observation std, or an ``(m, m)`` noise covariance.
        """
        A = torch.as_tensor(A, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        m = A.shape[0]
        if A.shape != (m, self.d) or y.shape != (m,):
            raise ValueError(f"A must be (m, {self.d}) and y (m,), got A {tuple(A.shape)} and y {tuple(y.shape)}")
        ns = torch.as_tensor(noise_std, dtype=torch.float64)
        R = ns if ns.ndim == 2 else torch.diag_embed(ns.expand(m) ** 2)
        S = self.covs
        AS = A[None] @ S  # (K, m, d)
        C = AS @ A.T[None] + R[None]  # (K, m, m)
        L = torch.linalg.cholesky(C)
        G = torch.cholesky_solve(AS, L).transpose(1, 2)  # S A^T C^-1: (K, d, m)
        resid = y[None] - self.means @ A.T  # (K, m)
        means = self.means + (G @ resid[:, :, None])[..., 0]
        covs = S - G @ AS
        alpha = torch.linalg.solve_triangular(L, resid[:, :, None], upper=False)[..., 0]
        loglik = -0.5 * (alpha**2).sum(-1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1) - 0.5 * m * math.log(2 * math.pi)
        logw = self.weights.log() + loglik
        w = torch.softmax(logw, 0)
        return GaussianMixture(w, means, (covs + covs.transpose(1, 2)) / 2, event_shape=self.event_shape)


def grid_mixture(d: int = 2, spacing: float = 8.0, seed: int = 0, event_shape=None) -> GaussianMixture:
    """The 25-component mixture of the MCGdiff benchmark (Cardoso et al. 2024): means
    ``(spacing*i, spacing*j)`` for ``i, j in -2..2`` repeated ``d/2`` times, unit covariances,
    weights ``xi^2`` with ``xi ~ N(0, 1)`` (seeded)."""
    if d % 2:
        raise ValueError(f"d must be even, got {d}")
    ij = torch.tensor([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=torch.float64)
    means = (-spacing * ij).repeat(1, d // 2)
    xi = torch.randn(25, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return GaussianMixture(xi**2, means, 1.0, event_shape=event_shape)


def mcg_problem(d: int, d_y: int, seed: int = 0):
    """One inverse problem of the MCGdiff recipe: returns ``(prior, A, y, noise_std, x_true)``.

    ``A = U diag(s) V[:d_y]`` from the SVD of a Gaussian matrix with singular values replaced by
    sorted U(0, 1) draws; ``noise_std = u * max(s)``, ``u ~ U(0, 1)``; ``y = A x_true + noise``.
    """
    g = torch.Generator().manual_seed(seed)
    prior = grid_mixture(d, seed=seed)
    a0 = torch.randn(d_y, d, generator=g, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(a0, full_matrices=False)
    s = torch.sort(torch.rand(d_y, generator=g, dtype=torch.float64), descending=True).values
    A = u @ torch.diag(s) @ vh
    noise_std = float(torch.rand(1, generator=g, dtype=torch.float64)) * float(s.max())
    x_true = prior.sample(1, generator=g)[0]
    y = A @ x_true + noise_std * torch.randn(d_y, generator=g, dtype=torch.float64)
    return prior, A, y, noise_std, x_true


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    n_directions: int = 1000,
    p: int = 1,
    generator: torch.Generator | None = None,
) -> float:
    r"""Sliced Wasserstein-p distance between two equal-size sample sets.

    .. math:: SW_p(x, y) = \Big(\frac1L\sum_{l=1}^L W_p^p(\theta_l^\top x, \theta_l^\top y)\Big)^{1/p}

    with ``L = n_directions`` unit directions drawn uniformly on the sphere. The 1-D distances
    use sorted projections (exact for equal sample counts). ``p=1`` matches the MCGdiff benchmark.
    """
    return SlicedWasserstein(y, n_directions, p, generator)(x)


class SlicedWasserstein:
    """:func:`sliced_wasserstein` against one fixed reference set ``y``: the directions and the
    sorted projections of ``y`` are computed once, so scoring many sample sets against the same
    reference costs one projection each (``SlicedWasserstein(y, L)(x) == sliced_wasserstein(x, y, L)``)."""

    def __init__(self, y: torch.Tensor, n_directions: int = 1000, p: int = 1,
                 generator: torch.Generator | None = None):
        y = torch.as_tensor(y, dtype=torch.float64).reshape(len(y), -1)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        theta = torch.randn(y.shape[1], n_directions, generator=generator, dtype=torch.float64)
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        self.shape, self.p = tuple(y.shape), int(p)
        self.sorted_y = torch.sort(y @ self.theta, dim=0).values

    def __call__(self, x: torch.Tensor) -> float:
        x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
        if tuple(x.shape) != self.shape:
            raise ValueError(f"sample sets must have the same shape, got {tuple(x.shape)} and {self.shape}")
        px = torch.sort(x @ self.theta, dim=0).values
        wpp = ((px - self.sorted_y).abs() ** self.p).mean(0)
        return float(wpp.mean() ** (1 / self.p))
