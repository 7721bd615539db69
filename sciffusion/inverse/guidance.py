r"""Likelihood guidance as wrapper denoisers (DPS, PiGDM, MMPS).

Under ``x = x0 + sigma eps`` the posterior score is the prior score plus the likelihood score,
and Tweedie's formula turns a score into a denoiser, so conditioning on ``y`` is a change of
denoiser (as in azula):

.. math::
    D_y(x, \sigma) = D(x, \sigma) + \sigma^2 \nabla_x \log p_\sigma(y \mid x).

Each class below returns :math:`D_y` through the denoiser signature ``guided(x, sigma, **cond)``,
so it composes with every sampler of :mod:`sciffusion.diffusion`. Because the guidance lives in
the denoiser, a sampler integrates it against the noise decrement ``d sigma`` like the prior
term; its effect converges as the number of steps grows instead of growing with it, so a guidance
strength tuned at one step count carries over to another (unlike DPS's per-step ``zeta``).

The methods differ in how they approximate :math:`p_\sigma(y \mid x) = \int p(y \mid x_0)\,
p(x_0 \mid x)\,dx_0` with :math:`p(x_0 \mid x) \approx N(D, V)`:

* :class:`DPS` (Chung et al. 2023): the point estimate :math:`V = 0` (likelihood of
  :math:`D`), here with a diagonal effective variance and a strength ``zeta`` (see the class).
* :class:`PiGDM` (Song et al. 2023): :math:`V = r^2 I`, :math:`r^2 = \sigma^2\sigma_d^2/(\sigma^2+\sigma_d^2)`
  (the posterior variance of a Gaussian prior of variance :math:`\sigma_d^2`).
* :class:`MMPS` (Rozet et al. 2024): :math:`V = \sigma^2 \partial D/\partial x` (Tweedie's
  covariance formula, exact for any prior), with :math:`(R + A V A^T) u = y - A(D)` solved by
  conjugate gradients using vector-Jacobian products.

For PiGDM and MMPS the likelihood score is :math:`J^T A^T u` with ``u`` the solution of the
system above and :math:`J = \partial D/\partial x`; the covariance is held fixed when
differentiating (as in both papers). A nonlinear operator is linearised at ``D``.
"""

from __future__ import annotations

import torch

from sciffusion.diffusion.denoiser import as_sigma, broadcast_like
from sciffusion.inverse.operators import Observation


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


def conjugate_gradient(matvec, b: torch.Tensor, iters: int, precond: torch.Tensor | None = None,
                       tol: float = 1e-12, lower: torch.Tensor | None = None) -> torch.Tensor:
    """Solve ``M u = b`` for symmetric positive definite ``M`` per batch row (Jacobi-preconditioned CG).

    A row stops at convergence or at the first direction with non-positive curvature, or with
    curvature below ``p^T diag(lower) p`` when ``M`` is known to dominate ``diag(lower)``.

    ``matvec(v) -> M v`` acts on ``(B, *shape)``; ``precond`` is ``diag(M)`` (broadcastable).
    Exact after ``m`` iterations for an ``m``-dimensional system (in exact arithmetic)."""
    inv = 1.0 / precond if precond is not None else b.new_ones(())
    u = torch.zeros_like(b)
    r = b.clone()
    z = r * inv
    p = z.clone()
    rz = _dot(r, z)
    tiny, tol = torch.finfo(b.dtype).tiny, max(tol, torch.finfo(b.dtype).eps)  # 1e-300 is 0 in float32
    b2 = _dot(b, b).clamp_min(tiny)
    active = torch.ones(b.shape[0], dtype=torch.bool, device=b.device)
    for _ in range(int(iters)):
        mp = matvec(p)
        curv = _dot(p, mp)
        # a learned denoiser's Jacobian need not be symmetric positive: stop a row at the
        # first direction where M = R + A V A^T shows V is not positive (its iterate is kept)
        floor = _dot(p, lower * p) * (1 - 1e-6) if lower is not None else torch.zeros_like(curv)
        active = active & (curv > 0) & (curv >= floor) & torch.isfinite(curv)
        alpha = torch.where(active, rz / curv.clamp_min(tiny), torch.zeros_like(rz))
        u = u + broadcast_like(alpha, u) * p
        r = r - broadcast_like(alpha, r) * mp
        active = active & (_dot(r, r) > tol**2 * b2)
        if not bool(active.any()):
            break
        z = r * inv
        rz_new = _dot(r, z)
        p = z + broadcast_like(rz_new / rz.clamp_min(tiny), p) * p
        rz = rz_new
    return u


class _Guided:
    """Shared plumbing: evaluate ``D`` with autograd, add ``sigma^2 * grad log p(y | x)``."""

    def __init__(self, denoiser, observation: Observation, sigma_data: float | None = None):
        self.denoiser = denoiser
        self.obs = observation
        self.sigma_data = float(getattr(denoiser, "sigma_data", 1.0) if sigma_data is None else sigma_data)

    def __getattr__(self, name):  # expose event_shape, sigma_data... of the wrapped denoiser
        if name == "denoiser":
            raise AttributeError(name)
        return getattr(self.denoiser, name)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = as_sigma(sigma, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = self.denoiser(xg, sigma, **cond)
            corr = self.correction(xg, d, sigma)
        return (d + corr).detach()

    def correction(self, x, d, sigma) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _r2(self, sigma, d: torch.Tensor) -> torch.Tensor:
        """``r^2 = sigma^2 sigma_d^2 / (sigma^2 + sigma_d^2)`` (the posterior variance of a Gaussian prior of
        variance ``sigma_d^2``), shaped to broadcast against the observations."""
        s2 = broadcast_like(sigma, self.obs.y[None]).to(d.dtype) ** 2
        return s2 * self.sigma_data**2 / (s2 + self.sigma_data**2)

    def _point_score(self, x, d, sigma, zeta: float, gram: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """``zeta sigma^2`` times the gradient in ``x`` of the likelihood of the point estimate ``d`` with the
        diagonal effective variance ``var + r^2 gram`` (DPS, see :class:`DPS`)."""
        veff = self.obs.var.to(d.dtype) + self._r2(sigma, d) * gram
        r = self.obs.residual(d)
        loglik = -0.5 * (r**2 / veff).reshape(r.shape[0], -1).sum(1)
        (g,) = torch.autograd.grad(loglik.sum(), x, retain_graph=retain_graph)
        return zeta * broadcast_like(sigma, x).to(d.dtype) ** 2 * g

    # linear(ised) operator products at the Tweedie estimate d
    def _operator_maps(self, d: torch.Tensor):
        op, obs = self.obs.operator, self.obs.observed
        probe = (torch.zeros_like(d) if op.linear else d.detach()).requires_grad_(True)
        out = op(probe)
        if op.linear:
            forward = op
        else:
            dummy = torch.zeros_like(out, requires_grad=True)
            (vjp_graph,) = torch.autograd.grad(out, probe, dummy, create_graph=True)

            def forward(w):  # JVP by the double-VJP trick
                return torch.autograd.grad(vjp_graph, dummy, w, retain_graph=True)[0]

        def adjoint(v):
            return torch.autograd.grad(out, probe, torch.where(obs, v, 0.0), retain_graph=True)[0]

        return forward, adjoint


class DPS(_Guided):
    r"""Diffusion posterior sampling (Chung et al. 2023) in likelihood-score form.

    DPS replaces :math:`p_\sigma(y \mid x)` by the likelihood of the Tweedie point estimate,
    :math:`p(y \mid D(x,\sigma))`, and steps along its gradient with a tuned per-step size
    :math:`\zeta'/\|y - A(D)\|`, so its total push grows with the number of steps and the step size
    must be retuned whenever the step count changes. Here the same point-estimate likelihood is
    used as a score inside the denoiser, with an effective variance that keeps it smooth:

    .. math::
        D_y = D + \zeta\,\sigma^2 \nabla_x \Big[-\tfrac12 \sum_j
              \frac{(y_j - A(D)_j)^2}{s_j^2 + r_\sigma^2\,(AA^T)_{jj}}\Big],\qquad
        r_\sigma^2 = \frac{\sigma^2\sigma_d^2}{\sigma^2+\sigma_d^2}.

    The sampler integrates this against :math:`d\sigma` like the prior term, so the result
    converges as steps are added and ``zeta`` (default 1: the plain likelihood score) holds at
    any step count. Unlike :class:`PiGDM` it ignores the correlations of ``A A^T`` (diagonal
    effective variance); ``r^2 -> 0`` at low noise recovers DPS's exact-likelihood limit.
    """

    def __init__(self, denoiser, observation: Observation, zeta: float = 1.0, sigma_data: float | None = None):
        super().__init__(denoiser, observation, sigma_data)
        self.zeta = float(zeta)
        self._gram_diag = observation.gram_diag()  # ones for a nonlinear operator

    def correction(self, x, d, sigma):
        return self._point_score(x, d, sigma, self.zeta, self._gram_diag.to(d.dtype))


class PiGDM(_Guided):
    r"""Pseudoinverse-guided diffusion (Song et al. 2023) with observation noise.

    .. math::
        \nabla_x \log p_\sigma(y \mid x) \approx J^T A^T (r^2 A A^T + R)^{-1} (y - A(D)),\qquad
        r^2 = \frac{\sigma^2\sigma_d^2}{\sigma^2 + \sigma_d^2}

    ``A A^T`` is diagonal for :class:`~sciffusion.inverse.Mask`, :class:`~sciffusion.inverse.SparseSensors`
    and :class:`~sciffusion.inverse.Coarsen` (solved exactly), a dense Gram matrix for
    :class:`~sciffusion.inverse.Linear` (Cholesky), and otherwise solved by ``cg_iters`` steps of CG.
    ``sigma_data`` defaults to the denoiser's (1 for normalised data).
    """

    def __init__(self, denoiser, observation: Observation, cg_iters: int = 10, sigma_data: float | None = None):
        super().__init__(denoiser, observation, sigma_data)
        self.cg_iters = int(cg_iters)
        op = observation.operator
        self._diag_gram = getattr(op, "diagonal_gram", False)
        self._gram = None
        matrix = getattr(op, "matrix", None)
        if matrix is not None and matrix.shape[0] <= 4096:
            m = matrix.to(torch.float64)[observation.observed.reshape(-1)]
            self._gram = m @ m.T
        self._gram_diag = observation.gram_diag() if op.linear else None

    def correction(self, x, d, sigma):
        obs = self.obs
        r2 = self._r2(sigma, d)
        res = obs.residual(d)
        var = obs.var.to(d.dtype)
        if self._gram is not None:
            sel = obs.observed.reshape(-1)
            b = res.reshape(res.shape[0], -1)[:, sel]
            mat = r2.reshape(-1, 1, 1) * self._gram.to(d.dtype)[None] + torch.diag(var.reshape(-1)[sel])[None]
            u_obs = torch.linalg.solve(mat, b[..., None])[..., 0]
            u = torch.zeros_like(res.reshape(res.shape[0], -1))
            u[:, sel] = u_obs
            u = u.reshape(res.shape)
        elif self._diag_gram:
            u = res / (r2 * self._gram_diag.to(d.dtype) + var)
        else:
            forward, adjoint = self._operator_maps(d)
            pre = var + r2 * (self._gram_diag.to(d.dtype) if self._gram_diag is not None else 1.0)
            u = conjugate_gradient(lambda v: _masked(obs, var * v + r2 * forward(adjoint(v)), v), res,
                                   self.cg_iters, precond=pre)
        u = torch.where(obs.observed, u, 0.0)
        (g,) = torch.autograd.grad(obs.operator(d), x, u)
        return broadcast_like(sigma, x) ** 2 * g


def _masked(obs: Observation, mv: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Identity on missing entries so the system stays positive definite there."""
    return torch.where(obs.observed, mv, v)


class MMPS(_Guided):
    r"""Moment-matching posterior sampling (Rozet et al. 2024).

    .. math::
        V = \operatorname{Cov}[x_0 \mid x] = \sigma^2 J,\quad J = \partial D/\partial x,\qquad
        (R + A V A^T)\,u = y - A(D),\qquad \nabla_x \log p_\sigma(y\mid x) \approx J^T A^T u .

    ``V v`` is one vector-Jacobian product through the denoiser (``J`` is symmetric for the exact
    denoiser, as Tweedie's covariance formula requires), so each of the ``cg_iters`` conjugate-
    gradient iterations costs one VJP and the guidance one more. With ``cg_iters >= m`` for
    ``m`` observations the solve is exact, and with the exact denoiser of a Gaussian prior and a
    linear operator the guided denoiser is the exact posterior denoiser.
    """

    def __init__(self, denoiser, observation: Observation, cg_iters: int = 5, sigma_data: float | None = None):
        super().__init__(denoiser, observation, sigma_data)
        self.cg_iters = int(cg_iters)
        op = observation.operator
        self._gram_diag = observation.gram_diag() if op.linear else None

    def correction(self, x, d, sigma):
        obs = self.obs
        s2x = broadcast_like(sigma, x).to(d.dtype) ** 2
        var = obs.var.to(d.dtype)
        forward, adjoint = self._operator_maps(d)

        def cov(w):  # sigma^2 J^T w
            (g,) = torch.autograd.grad(d, x, w, retain_graph=True)
            return s2x * g

        r2 = self._r2(sigma, d)
        pre = var + r2 * (self._gram_diag.to(d.dtype) if self._gram_diag is not None else 1.0)
        u = conjugate_gradient(lambda v: _masked(obs, var * v + forward(cov(adjoint(v))), v),
                               obs.residual(d), self.cg_iters, precond=pre,
                               lower=torch.where(obs.observed, var, torch.ones_like(var)))
        u = torch.where(obs.observed, u, 0.0)
        return cov(adjoint(u))
