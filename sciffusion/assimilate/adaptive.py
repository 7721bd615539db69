r"""Adaptive inflation by the finite-size ensemble Kalman filter (EnKF-N; Bocquet 2011, Bocquet,
Raanes & Hannart 2015), per localisation domain, as DAPPER's LETKF does it with ``xN``.

The EnKF-N treats the forecast covariance as unknown given the ensemble and integrates it out
under a hyperprior; for each analysis that leaves one scalar to choose, the prior inflation ``l``
of the anomalies, the minimiser of the dual cost

.. math::
    J(l) = \sum_j \frac{\hat d_j^2}{l^2 s_j^2 + N - 1} + \frac{e_N}{l^2} + c_L \log l^2,

with :math:`s_j` the singular values of the whitened observed anomalies
:math:`Y = R^{-1/2} H (x_i - \bar x)` (``N`` rows), :math:`\hat d` the whitened innovation
:math:`R^{-1/2}(y - H \bar x)` in their left singular basis, and the hyperprior's constants
``e_N = (N + 1) / N``, ``c_L = N / (N - 1)`` (``g = 0``), mode-corrected towards 1 by how little
the observations weigh (``I - KH``) and both multiplied by ``x_n``: ``x_n = 1`` is the agnostic
hyperprior of a chaotic model, larger values trust the ensemble's sampling more and inflate less
(DAPPER's ``hyperprior_coeffs``). ``J`` is minimised by Newton's method from ``l = 1`` with
DAPPER's tolerances, all domains at once. The observations a domain sees are its slots with a
positive localisation weight, untapered (as DAPPER's ``local_analyses`` does).
"""

from __future__ import annotations

import torch


def enkf_n_inflation(anomalies: torch.Tensor, innovation: torch.Tensor, x_n: float = 1.0, g: int = 0,
                     xtol: float = 1e-4, ytol: float = 1e-7, iters: int = 100) -> torch.Tensor:
    """The EnKF-N prior inflation factor ``l`` of each domain (module docstring), ``(K,)``.

    Args:
        anomalies: whitened observed anomalies ``(K, N, m)``, ``R^{-1/2}(H x_i - mean)`` of each
            domain's ``m`` slots (0 in slots the domain does not see).
        innovation: whitened innovations ``(K, m)``, ``R^{-1/2}(y - H mean)`` (0 likewise).
        x_n: the hyperprior's certainty (DAPPER's ``xN``), > 0.
        g: DAPPER's ``g`` (an assumed rank deficiency of the hyperprior), 0 by default.
        xtol, ytol, iters: Newton's stopping rule, DAPPER's: a domain stops when its step is at
            most ``xtol`` or its ``|J'(l)|`` at most ``ytol``, or after ``iters`` steps.

    A domain whose iteration leaves ``l`` non-positive or non-finite, or that sees no
    observation, gets 1 (no inflation).
    """
    if not float(x_n) > 0:
        raise ValueError(f"x_n (the EnKF-N hyperprior's certainty, DAPPER's xN) must be > 0, got {x_n}")
    k, n, _ = anomalies.shape
    n1 = n - 1
    a = anomalies.to(torch.float64)
    lam, vec = torch.linalg.eigh(a @ a.transpose(1, 2))  # (K, N): s_j^2, the Gram matrix's eigenvalues
    lam = lam.clamp_min(0.0)
    q = torch.einsum("knj,kn->kj", vec, torch.einsum("knm,km->kn", a, innovation.to(torch.float64))) ** 2  # s^2 d^2
    e_n, c_l = (n + 1) / n, (n + g) / n1
    prior_mode = e_n / c_l
    i_kh = (n1 / (lam + n1)).mean(-1)  # ~ 1 / (1 + HBH / R): how little the observations weigh
    mc = (prior_mode**i_kh) ** 0.5
    e_n, c_l = e_n / mc * float(x_n), c_l * mc * float(x_n)

    def slope(l: torch.Tensor) -> torch.Tensor:  # J'(l)
        den = l[:, None] ** 2 * lam + n1
        return -2 * l * (q / den**2).sum(-1) - 2 * e_n / l**3 + 2 * c_l / l

    def curvature(l: torch.Tensor) -> torch.Tensor:  # J''(l)
        den = l[:, None] ** 2 * lam + n1
        return 8 * l**2 * (lam * q / den**3).sum(-1) + 6 * e_n / l**4 - 2 * c_l / l**2

    l = torch.ones(k, dtype=torch.float64, device=anomalies.device)
    jp = slope(l)
    going = jp.abs() > ytol
    for _ in range(iters):
        if not bool(going.any()):
            break
        step = jp / curvature(l)
        l = torch.where(going, l - step, l)
        jp = torch.where(going, slope(l), jp)
        going = going & (jp.abs() > ytol) & (step.abs() > xtol)
    seen = (a != 0).any(-1).any(-1)
    return torch.where(seen & torch.isfinite(l) & (l > 0), l, torch.ones_like(l))
