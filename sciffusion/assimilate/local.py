r"""Domain-localised analysis for large states (LETKF-style): many small analyses as one batch.

:func:`~sciffusion.assimilate.analysis` builds a dense ``(d, d)`` prior covariance, which at
``d = 10^4`` is 800 MB and an O(d^3) factorisation. Here the state is cut into *domains*, as in
the local ensemble transform Kalman filter (Hunt et al. 2007): domain ``k`` owns a set of state
entries (its block), sees a *window* (the block plus a halo) and the observations that read a
state entry inside the window, optionally down-weighted by distance (R-localisation:
``noise_std_j / sqrt(w_j)``, ``w_j`` a Gaspari-Cohn weight). Each domain runs the same analysis as
:func:`~sciffusion.assimilate.analysis` on its window (the forecast members restricted to the
window, normalised by the window's own mean and RMS spread, the ensemble prior's exact denoiser,
the member transport and the MMPS-guided sampler of :func:`sciffusion.inverse.sample`) and keeps
the block's entries.

The ``K`` local problems are independent, so they run as one: ``N`` members times ``K`` domains
are ``N K`` batch rows of length ``w`` (row ``r`` is member ``r // K`` in domain ``r % K``). The
prior is the product of ``K`` window priors, a block-diagonal covariance held as ``K``
eigendecompositions ``(K, w, w)``, its denoiser two batched ``(w, w)`` products; the conjugate
gradients of MMPS work per batch row, so no domain's solve sees another's. The observation
operator of row ``r`` is ``sqrt(w_j) (f(x_{pos_j}) - y_j)`` over its domain's observations
(``/ std_j`` when the noise differs between observations; padding entries have ``w_j = 0``)
against observations ``0``: the same likelihood, and for one domain covering the whole state the
same computation as :func:`~sciffusion.assimilate.analysis` to round-off
(``tests/test_assimilate_local.py``; with one std per observation the whitened rows change the
CG's Jacobi preconditioner, so equal once the CG has converged). Cost: O(N K w^2) per denoiser
call instead of O(N d^2).

Observations must be pointwise: observation ``j`` is ``f(x[obs_index[j]])`` for an elementwise
``f`` (identity for a mask or point sensors, ``torch.atan``...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sciffusion.assimilate.analysis import gaspari_cohn
from sciffusion.assimilate.ensemble_space import domain_enkf_n, ensemble_space_analysis
from sciffusion.diffusion import heun_step, karras_sigmas
from sciffusion.inverse import Function
from sciffusion.inverse import sample as posterior_sample


@dataclass(frozen=True)
class Domains:
    """``K`` local analysis domains with windows of ``w`` state entries and ``m`` observation slots.

    Attributes:
        windows: ``(K, w)`` flat state indices of each window (no repeats within a window).
        keep: ``(K, w)`` bool, the entries the domain analyses (its block); every state index is
            kept by exactly one domain.
        obs: ``(K, m)`` index into the observation vector of each slot (any valid index where ``weight`` is 0).
        obs_pos: ``(K, m)`` position in the window of the state entry each slot reads.
        weight: ``(K, m)`` R-localisation weight in ``[0, 1]``; 0: the slot is unused (padding).
        taper: ``(w, w)`` or ``(K, w, w)`` Schur taper of the window covariance, or None.
    """

    windows: torch.Tensor
    keep: torch.Tensor
    obs: torch.Tensor
    obs_pos: torch.Tensor
    weight: torch.Tensor
    taper: torch.Tensor | None = None

    def blocks(self) -> torch.Tensor | None:
        """``(K, b)`` the state indices each domain keeps, when every block has ``b`` entries (every
        periodic layout), else None; computed once per instance."""
        if "_blocks" not in self.__dict__:
            sizes = self.keep.count_nonzero(1)
            equal = bool((sizes == sizes[0]).all())
            object.__setattr__(self, "_blocks", self.windows[self.keep].reshape(len(sizes), -1) if equal else None)
        return self.__dict__["_blocks"]

    def check(self, size: int, n_obs: int) -> None:
        """Raise ValueError naming the field that does not fit a state of ``size`` and ``n_obs`` observations.

        A passed check is remembered for that ``(size, n_obs)`` (the fields are read, never written, by
        the analyses), so a cycled filter pays for it once, not every cycle."""
        if self.__dict__.get("_checked") == (size, n_obs):
            return
        k, w = self.windows.shape
        if self.keep.shape != (k, w):
            raise ValueError(f"Domains.keep must be (K, w) = {(k, w)} like windows, got {tuple(self.keep.shape)}")
        if int(self.windows.min()) < 0 or int(self.windows.max()) >= size:
            raise ValueError(f"Domains.windows holds indices outside the state of {size} entries")
        if bool((self.windows.sort(1).values.diff(dim=1) == 0).any()):
            raise ValueError("Domains.windows repeats a state index within a window")
        count = torch.bincount(self.windows[self.keep], minlength=size)
        if bool((count != 1).any()):
            bad = torch.nonzero(count != 1).flatten()[:5].tolist()
            raise ValueError(f"Domains.keep must keep every state index exactly once; indices {bad} are kept "
                             f"{count[bad].tolist()} times")
        m = self.obs.shape[1]
        for name in ("obs", "obs_pos", "weight"):
            if getattr(self, name).shape != (k, m):
                raise ValueError(f"Domains.{name} must be (K, m) = {(k, m)}, got {tuple(getattr(self, name).shape)}")
        used = self.weight > 0
        if bool((self.obs[used] < 0).any() | (self.obs[used] >= n_obs).any()):
            raise ValueError(f"Domains.obs holds indices outside the {n_obs} observations")
        if bool((self.obs_pos[used] < 0).any() | (self.obs_pos[used] >= w).any()):
            raise ValueError(f"Domains.obs_pos holds positions outside the window of {w} entries")
        if bool((self.weight < 0).any() | (self.weight > 1).any()):
            raise ValueError("Domains.weight must lie in [0, 1]")
        if self.taper is not None and tuple(self.taper.shape) not in ((w, w), (k, w, w)):
            raise ValueError(f"Domains.taper must be (w, w) or (K, w, w) = {(k, w, w)}, got {tuple(self.taper.shape)}")
        object.__setattr__(self, "_checked", (size, n_obs))


def _periodic(a: torch.Tensor, size: int) -> torch.Tensor:
    a = a.abs() % size
    return torch.minimum(a, size - a)


def _check_layout(sizes: tuple, obs_index, block, radius, obs_radius, taper_radius):
    """The checked ``(block, radius, obs_index)`` of a periodic domain layout on a grid of ``sizes``."""
    size = sizes[0] if len(sizes) == 1 else sizes
    if isinstance(block, bool) or int(block) != block or block < 1 or any(n % int(block) for n in sizes):
        raise ValueError(f"block must be a positive integer dividing the grid size {size}, got {block!r}")
    if isinstance(radius, bool) or int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer (grid points of halo), got {radius!r}")
    for name, r in (("obs_radius", obs_radius), ("taper_radius", taper_radius)):
        if r is not None and not r > 0:
            raise ValueError(f"{name} must be positive (or None), got {r!r}")
    loc = torch.as_tensor(obs_index, dtype=torch.long).reshape(-1)
    total = int(torch.tensor(sizes).prod())
    if loc.numel() and (int(loc.min()) < 0 or int(loc.max()) >= total):
        raise ValueError(f"obs_index holds {'flat ' if len(sizes) > 1 else ''}grid points outside 0..{total - 1}")
    return int(block), int(radius), loc


def periodic_domains(size: int, obs_index, *, radius: int, block: int = 1, obs_radius: float | None = None,
                     taper_radius: float | None = None) -> Domains:
    """Contiguous domains on a 1-D periodic grid of ``size`` points (e.g. Lorenz-96).

    Args:
        size: grid points ``d``.
        obs_index: ``(n_obs,)`` grid point each observation reads.
        radius: halo on each side: the window is ``block + 2 radius`` points (the whole grid once
            that reaches ``size``).
        block: points per domain (the analysed centre); must divide ``size``.
        obs_radius: Gaspari-Cohn half-width of the R-localisation weight by distance to the block
            (1 inside it, 0 beyond ``2 obs_radius`` from its nearest point); None: every window
            observation at full weight.
        taper_radius: Gaspari-Cohn half-width of a Schur taper of the window covariance; None: none.
    """
    block, radius, loc = _check_layout((size,), obs_index, block, radius, obs_radius, taper_radius)
    w = min(block + 2 * radius, size)
    starts = torch.arange(0, size, block)
    first = torch.zeros_like(starts) if w == size else (starts - radius) % size  # window start
    windows = (first[:, None] + torch.arange(w)) % size
    keep = ((windows - starts[:, None]) % size) < block
    order = torch.argsort(loc)
    sorted_loc = loc[order]
    loc2, order2 = torch.cat([sorted_loc, sorted_loc + size]), torch.cat([order, order])
    lo = torch.searchsorted(loc2, first)
    count = torch.searchsorted(loc2, first + w) - lo
    m = max(int(count.max()) if count.numel() else 0, 1)
    slot = lo[:, None] + torch.arange(m)
    valid = torch.arange(m) < count[:, None]
    slot = slot.clamp(max=max(len(loc2) - 1, 0))
    obs = order2[slot] if len(loc2) else torch.zeros_like(slot)
    pos = torch.where(valid, (loc2[slot] - first[:, None]) if len(loc2) else slot, 0)
    weight = valid.to(torch.float64)
    if obs_radius is not None:
        centre = starts.to(torch.float64) + (block - 1) / 2
        dist = (_periodic(loc[obs].to(torch.float64) - centre[:, None], size) - (block - 1) / 2).clamp_min(0)
        weight = weight * gaspari_cohn(dist, obs_radius)
    taper = None
    if taper_radius is not None:
        i = torch.arange(w)
        taper = gaspari_cohn(_periodic(i[:, None] - i[None], size).to(torch.float64), taper_radius)
    return Domains(windows, keep, obs, pos, weight, taper)


def periodic_domains_2d(shape, obs_index, *, radius: int, block: int = 1, obs_radius: float | None = None,
                        taper_radius: float | None = None) -> Domains:
    """Square domains on a 2-D doubly periodic grid ``(ny, nx)`` (e.g. Kolmogorov flow), row-major flat indices.

    Args:
        shape: ``(ny, nx)`` grid points.
        obs_index: ``(n_obs,)`` flat grid point ``iy * nx + ix`` each observation reads.
        radius: halo on each side: the window is ``(block + 2 radius)^2`` points (per axis the whole
            axis once that reaches its length).
        block: ``block x block`` points per domain (the analysed centre); must divide ``ny`` and ``nx``.
        obs_radius: Gaspari-Cohn half-width of the R-localisation weight by the periodic Euclidean
            distance from the observed point to the nearest point of the block; None: every window
            observation at full weight.
        taper_radius: Gaspari-Cohn half-width of a Schur taper of the window covariance by the
            periodic Euclidean distance between points; None: none.
    """
    ny, nx = (int(v) for v in shape)
    block, radius, loc = _check_layout((ny, nx), obs_index, block, radius, obs_radius, taper_radius)
    axes = []
    for n in (ny, nx):  # per axis: block starts, window starts and length
        w = min(block + 2 * radius, n)
        starts = torch.arange(0, n, block)
        axes.append((starts, torch.zeros_like(starts) if w == n else (starts - radius) % n, w, n))
    (sy, fy, wy, _), (sx, fx, wx, _) = axes
    # domain k = (ky, kx) row-major; window point p = (py, px) row-major
    first_y, first_x = fy.repeat_interleave(len(sx)), fx.repeat(len(sy))
    start_y, start_x = sy.repeat_interleave(len(sx)), sx.repeat(len(sy))
    rows = (first_y[:, None] + torch.arange(wy)) % ny  # (K, wy)
    cols = (first_x[:, None] + torch.arange(wx)) % nx  # (K, wx)
    windows = (rows[:, :, None] * nx + cols[:, None, :]).reshape(len(rows), wy * wx)
    keep = ((((rows - start_y[:, None]) % ny) < block)[:, :, None]
            & (((cols - start_x[:, None]) % nx) < block)[:, None, :]).reshape(windows.shape)
    oy, ox = loc // nx, loc % nx
    ry, rx = (oy[None] - first_y[:, None]) % ny, (ox[None] - first_x[:, None]) % nx  # (K, n_obs)
    inside = (ry < wy) & (rx < wx)
    count = inside.sum(1)
    m = max(int(count.max()) if count.numel() else 0, 1)
    order = torch.argsort((~inside).to(torch.int8), dim=1, stable=True)[:, :m] if loc.numel() else \
        torch.zeros(len(rows), m, dtype=torch.long)
    valid = torch.arange(m) < count[:, None]
    obs = torch.where(valid, order, 0) if loc.numel() else order
    pos = torch.where(valid, (ry * wx + rx).gather(1, order), 0) if loc.numel() else order
    weight = valid.to(torch.float64)
    if obs_radius is not None and loc.numel():
        half = (block - 1) / 2
        dy = (_periodic(oy[obs].to(torch.float64) - (start_y[:, None] + half), ny) - half).clamp_min(0)
        dx = (_periodic(ox[obs].to(torch.float64) - (start_x[:, None] + half), nx) - half).clamp_min(0)
        weight = weight * gaspari_cohn((dy**2 + dx**2).sqrt(), obs_radius)
    taper = None
    if taper_radius is not None:
        py, px = windows[0] // nx, windows[0] % nx  # distances do not depend on the window's place
        dist = (_periodic(py[:, None] - py[None], ny) ** 2 + _periodic(px[:, None] - px[None], nx) ** 2)
        taper = gaspari_cohn(dist.to(torch.float64).sqrt(), taper_radius)
    return Domains(windows, keep, obs, pos, weight, taper)


class LocalPrior:
    """The product of ``K`` window priors: per window the ensemble prior of :func:`ensemble_prior`
    (``C`` components sharing the covariance ``(w, w)``), held as eigendecompositions. A denoiser on
    rows ``(N' K, w)``, row ``r`` in window ``r % K``; exact, differentiable."""

    def __init__(self, members: torch.Tensor, *, bandwidth: float = 1.0, inflation: float | torch.Tensor = 1.0,
                 taper: torch.Tensor | None = None):
        n, k, w = members.shape  # (N, K, w), normalised members
        mean = members.mean(0)
        # inflation: one factor, or one per window (K,)
        anom = (members - mean) * torch.as_tensor(inflation, dtype=members.dtype, device=members.device).reshape(-1, 1)
        cov = torch.einsum("nki,nkj->kij", anom, anom) / (n - 1)
        if taper is not None:
            cov = cov * taper.to(cov)
        means = mean[:, None] if bandwidth == 1.0 else (
            mean[:, None] + ((1 - bandwidth**2) * n / (n - 1)) ** 0.5 * anom.transpose(0, 1))
        lam, self.vecs = torch.linalg.eigh(bandwidth**2 * (cov + cov.transpose(1, 2)) / 2)
        self.lam = lam.clamp_min(0)
        self.means = torch.einsum("kji,kcj->kci", self.vecs, means)  # (K, C, w) in the eigenbases
        self.k, self.w = k, w
        self.event_shape = (w,)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if x.shape[0] % self.k:
            raise ValueError(f"the local prior needs rows in multiples of its {self.k} domains, got {x.shape[0]}")
        z = x.reshape(-1, self.k, self.w).to(torch.float64)
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        var = self.lam + s.reshape(-1, self.k, 1) ** 2  # (N', K, w)
        diff = torch.einsum("kji,nkj->nki", self.vecs, z)[:, :, None] - self.means  # (N', K, C, w)
        shrink = (self.lam / var)[:, :, None]
        if self.means.shape[1] == 1:
            out = (self.means + shrink * diff)[:, :, 0]
        else:  # responsibilities: the shared covariance's log-determinant cancels
            r = torch.softmax(-0.5 * (diff**2 / var[:, :, None]).sum(-1), dim=-1)
            out = (r[..., None] * (self.means + shrink * diff)).sum(2)
        return torch.einsum("kij,nkj->nki", self.vecs, out).reshape(x.shape).to(x.dtype)


def default_guidance(space: str, function) -> str:
    """``local_analysis``'s guidance when none is given: the closed form (``"exact"``) in ensemble space
    with linear observations, where it is the converged MMPS at a fraction of the cost; else ``"mmps"``."""
    return "exact" if space == "ensemble" and function is None else "mmps"


def random_rotation(n: int, generator: torch.Generator | None = None, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """A random ``(n, n)`` orthogonal matrix that keeps the ensemble mean: ``Q 1 = 1``, Haar-distributed
    on the complement of ``1`` (Sakov & Oke 2008's mean-preserving rotation, DAPPER's ``genOG_1``).
    ``mean + Q @ (members - mean)`` keeps the members' mean and covariance and mixes which member
    carries which anomaly."""
    if n < 2:
        raise ValueError(f"a mean-preserving rotation needs at least 2 members, got {n}")
    g = torch.randn(n - 1, n - 1, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    block = torch.eye(n, dtype=torch.float64)
    block[1:, 1:] = q * torch.sign(torch.diagonal(r))  # Haar on O(n - 1)
    u = torch.zeros(n, dtype=torch.float64)
    u[0] = 1.0
    u -= n**-0.5  # Householder reflection H: e_1 <-> 1 / sqrt(n)
    h = torch.eye(n, dtype=torch.float64) - 2 * torch.outer(u, u) / (u @ u)
    return (h @ block @ h).to(dtype=dtype, device=device)


def local_analysis(ensemble: torch.Tensor, y, *, domains: Domains, noise_std, function=None,
                   bandwidth: float = 1.0, inflation: float = 1.0, guidance: str | None = None,
                   sampler: str | None = "heun", steps: int = 16, sigma_max: float = 20.0, sigma_min: float = 0.002,
                   start: str = "members", space: str = "state", rotate: bool = False,
                   enkf_n: float | None = None, generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """Analysis ensemble ``(N, *state)`` by one analysis per domain (module docstring), batched.

    Args:
        ensemble: forecast members ``(N, *state)``; ``domains`` index the flattened state.
        y: observations ``(n_obs,)``, observation ``j`` reading the state entry the domains say
            (``f(x[obs_index[j]])`` of :func:`periodic_domains`); NaN: missing.
        domains: :class:`Domains` (e.g. :func:`periodic_domains`).
        noise_std: scalar or ``(n_obs,)``.
        function: elementwise observation function ``f`` (e.g. ``torch.atan``); None: identity.
        bandwidth, inflation, guidance, sampler, steps, sigma_max, sigma_min, start, generator,
            **options: as in :func:`~sciffusion.assimilate.analysis`, per domain (the noise levels
            in units of each window's RMS spread).
        space: ``"state"`` (default): each domain's diffusion runs on its window's entries, O(w^2)
            per row and call; ``"ensemble"``: on the ``N`` weights of the members' span
            (:mod:`~sciffusion.assimilate.ensemble_space`, the LETKF's space), O(N^2) whatever the
            window, so a wide localisation costs no more than a narrow one; no covariance taper.
            With ``function=None`` it also takes ``guidance="exact"``: the posterior denoiser in
            closed form (:class:`~sciffusion.assimilate.ensemble_space.LinearPosterior`), no
            guidance approximation and no conjugate gradients.
        guidance: None (default): ``"exact"`` where it applies (``space="ensemble"``, ``function=None``),
            else ``"mmps"`` (:func:`default_guidance`); or any method of :func:`sciffusion.inverse.sample`.
        rotate: after the analysis, one :func:`random_rotation` of all members' anomalies (the same
            for every domain; drawn from ``generator``): DAPPER's ``rot=True``, which keeps the mean and
            covariance and stops a deterministic square-root update from pinning the same member
            to the same anomaly cycle after cycle.
        enkf_n: adaptive inflation: each domain's anomalies multiplied by its finite-size EnKF-N
            inflation with this hyperprior certainty (DAPPER's LETKF ``xN``;
            :func:`~sciffusion.assimilate.adaptive.enkf_n_inflation`), estimated each analysis from
            the innovations of the observations it sees; on top of ``inflation``. None: none. In
            either space (the same factor: ``ensemble_space.domain_enkf_n``).

    A domain with no observation (all weights 0 or NaN) keeps its forecast.
    """
    n, state = ensemble.shape[0], tuple(ensemble.shape[1:])
    if n < 2:
        raise ValueError(f"the forecast ensemble needs at least 2 members, got {n}")
    if not 0.0 <= bandwidth <= 1.0:
        raise ValueError(f"bandwidth must be in [0, 1], got {bandwidth}")
    if start not in ("members", "noise"):
        raise ValueError(f"start must be 'members' or 'noise', got {start!r}")
    if space not in ("state", "ensemble"):
        raise ValueError(f"space must be 'state' or 'ensemble', got {space!r}")
    guidance = default_guidance(space, function) if guidance is None else guidance
    if guidance == "exact" and space != "ensemble":
        raise ValueError("guidance='exact' is the closed-form posterior of space='ensemble' (linear observations); "
                         "pass space='ensemble', or a guidance method such as 'mmps'")
    x = ensemble.reshape(n, -1).to(torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64, device=x.device).reshape(-1)
    domains.check(x.shape[1], y.numel())
    std = torch.as_tensor(noise_std, dtype=torch.float64, device=x.device)
    if std.ndim and std.shape != y.shape:
        raise ValueError(f"noise_std must be a scalar or one std per observation {tuple(y.shape)}, "
                         f"got shape {tuple(std.shape)}")
    if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
        raise ValueError(f"noise_std must be finite and positive, got min {float(std.min()):g}")
    if std.ndim and bool((std == std.reshape(-1)[0]).all()):  # one std for all: no rows to whiten
        std = std.reshape(-1)[0]
    k, w = domains.windows.shape
    y_loc = y[domains.obs]
    weight = torch.where(torch.isnan(y_loc), 0.0, domains.weight.to(y_loc))
    active = (weight > 0).any(1)
    if not bool(active.any()):
        return ensemble.clone()
    y_loc = torch.nan_to_num(y_loc)
    coef = weight.sqrt() if std.ndim == 0 else weight.sqrt() / std[domains.obs]
    if space == "ensemble":
        xa = ensemble_space_analysis(x, domains, y_loc, coef, 1.0 if std.ndim else std, active, function=function,
                                     bandwidth=bandwidth, inflation=inflation, guidance=guidance, sampler=sampler,
                                     steps=steps, sigma_max=sigma_max, sigma_min=sigma_min, start=start,
                                     generator=generator, enkf_n=enkf_n, weight=weight, **options)
        return _rotated(xa, rotate, generator).reshape(n, *state).to(ensemble.dtype)
    xw = x[:, domains.windows]  # (N, K, w)
    mean = xw.mean(0)
    infl = torch.full((k,), float(inflation), dtype=torch.float64, device=x.device)  # per domain
    if enkf_n is not None:
        infl = infl * domain_enkf_n(x, domains.windows.gather(1, domains.obs_pos), y_loc, coef, 1.0 if std.ndim else std,
                                    weight, enkf_n, function=function, inflation=inflation)
    scale = ((xw - mean) ** 2).sum(0).mean(-1).div(n - 1).sqrt() * infl  # (K,)
    if bool((scale[active] == 0).any()):
        bad = torch.nonzero(active & (scale == 0)).flatten()[:5].tolist()
        raise ValueError(f"the forecast ensemble has zero spread in the windows of domains {bad}")
    scale = torch.where(scale > 0, scale, 1.0)
    norm = (xw - mean) / scale[:, None]
    prior = LocalPrior(norm, bandwidth=bandwidth, inflation=infl, taper=domains.taper)
    sigmas = karras_sigmas(steps, sigma_min, sigma_max).to(torch.float64)
    if start == "members":  # the prior's probability-flow ODE upwards, as in analysis()
        z = (norm * infl[:, None]).reshape(n * k, w)
        up = sigmas[:-1].flip(0)
        for lo, hi in zip(up[:-1], up[1:]):
            z = heun_step(prior, z, lo, hi, noise=None, cond={})
        options["x"] = z
    pos = domains.obs_pos

    def observe(z: torch.Tensor) -> torch.Tensor:  # rows (B, w) -> weighted residuals (B, m)
        if z.shape[0] % k:  # a probe of the operator
            win = torch.arange(z.shape[0], device=z.device) % k
            xs = mean[win] + scale[win, None] * z
            vals = xs.gather(1, pos[win])
            f = vals if function is None else function(vals)
            return (f - y_loc[win]) * coef[win]
        xs = mean + scale[:, None] * z.reshape(-1, k, w)
        vals = xs.gather(2, pos.expand(xs.shape[0], -1, -1))
        f = vals if function is None else function(vals)
        return ((f - y_loc) * coef).reshape(z.shape[0], -1)

    zero = torch.zeros(pos.shape[1], dtype=torch.float64, device=x.device)
    za = posterior_sample(prior, Function(observe), zero, noise_std=1.0 if std.ndim else std,
                          sampler=sampler, n_members=n * k, sigmas=sigmas, generator=generator, event_shape=(w,),
                          dtype=torch.float64, device=ensemble.device, guidance=guidance, **options)
    xa = mean + scale[:, None] * za.reshape(n, k, w)
    xa = torch.where(active[:, None], xa, xw)
    out = torch.empty_like(x)
    out[:, domains.windows[domains.keep]] = xa[:, domains.keep]
    return _rotated(out, rotate, generator).reshape(n, *state).to(ensemble.dtype)


def _rotated(x: torch.Tensor, rotate: bool, generator) -> torch.Tensor:
    """Flat members ``(N, d)``, their anomalies rotated by one :func:`random_rotation` if ``rotate``."""
    if not rotate:
        return x
    mean = x.mean(0)
    return mean + random_rotation(x.shape[0], generator, x.dtype, x.device) @ (x - mean)
