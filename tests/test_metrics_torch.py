"""Torch scores: agreement with properscoring / scoringrules / the numpy path, exact gradients,
a Gaussian fitted by CRPS descent, and CPU-vs-CUDA agreement."""

import math

import numpy as np
import properscoring as ps
import pytest
import scoringrules as sr
import torch
import xarray as xr

import sciffusion.metrics as sm
from sciffusion.metrics import torch_scores as ts


def _case(seed, m=7, shape=(40, 3), nan=True):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((m, *shape)), rng.standard_normal(shape)
    if nan:
        x[rng.random(x.shape) < 0.15] = np.nan
        y[rng.random(y.shape) < 0.05] = np.nan
    return x, y


def test_crps_ensemble_matches_properscoring_and_scoringrules():
    """Standard = properscoring (ECDF CRPS); fair = scoringrules' 'fair' estimator; float64, 1e-12."""
    x, y = _case(0, nan=False)
    xt, yt = torch.tensor(x), torch.tensor(y)
    np.testing.assert_allclose(ts.crps_ensemble(xt, yt).numpy(), ps.crps_ensemble(y, np.moveaxis(x, 0, -1)),
                               rtol=1e-12, atol=1e-12)
    fair = sr.crps_ensemble(y, np.moveaxis(x, 0, -1), estimator="fair", backend="numpy")
    np.testing.assert_allclose(ts.crps_ensemble(xt, yt, fair=True).numpy(), fair, rtol=1e-12, atol=1e-12)
    # member-last tensors, member_dim as an axis
    np.testing.assert_allclose(ts.crps_ensemble(xt.movedim(0, -1), yt, member_dim=-1).numpy(),
                               ts.crps_ensemble(xt, yt).numpy(), rtol=1e-15)


def test_hand_computed_nan_table():
    """members [1,2,3,4] / [1,NaN,3,4] / all NaN / one valid, obs 2.5 (the numpy suite's table)."""
    x = torch.tensor([[1.0, 2, 3, 4], [1, math.nan, 3, 4], [math.nan] * 4, [math.nan, math.nan, 2, math.nan]]).T
    y = torch.full((4,), 2.5)
    torch.testing.assert_close(ts.crps_ensemble(x, y), torch.tensor([0.375, 0.5, math.nan, 0.5]), equal_nan=True)
    torch.testing.assert_close(ts.crps_ensemble(x, y, fair=True), torch.tensor([1 / 6, 1 / 6, math.nan, math.nan]),
                               equal_nan=True)
    torch.testing.assert_close(ts.crps_ensemble(x, y, skipna=False),
                               torch.tensor([0.375, math.nan, math.nan, math.nan]), equal_nan=True)


@pytest.mark.parametrize("fair", [False, True])
@pytest.mark.parametrize("skipna", [False, True])
def test_crps_ensemble_equals_the_numpy_path_with_nan_reductions_and_weights(fair, skipna):
    """Same values, NaN pattern, weighted NaN-skipping reductions and dtype as sm.crps_ensemble."""
    x, y = _case(1)
    w = np.array([1.0, 2.0, 0.5])
    xt, yt = torch.tensor(x), torch.tensor(y)
    for kw in [{}, {"reduce_dims": [0]}, {"reduce_dims": "all"}, {"reduce_dims": -2, "weights": w},
               {"reduce_dims": [0, 1], "weights": w}]:
        ref = sm.crps_ensemble(x, y, fair=fair, skipna=skipna, **kw)
        got = ts.crps_ensemble(xt, yt, fair=fair, skipna=skipna, **kw)
        assert got.shape == ref.shape and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-14)
    x32 = torch.tensor(x, dtype=torch.float32)
    got32 = ts.crps_ensemble(x32, yt, fair=fair, skipna=skipna, reduce_dims=[0])
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), sm.crps_ensemble(x.astype(np.float32), y, fair=fair, skipna=skipna,
                                                               reduce_dims=[0]), rtol=1e-6)


def test_crps_gaussian_and_its_gradient_match_properscoring():
    """Values and d/dmu, d/dsigma against properscoring's closed-form gradient (grad=True)."""
    rng = np.random.default_rng(2)
    mu, sig, y = rng.standard_normal(50), rng.random(50) + 0.2, rng.standard_normal(50)
    mu_t, sig_t = torch.tensor(mu, requires_grad=True), torch.tensor(sig, requires_grad=True)
    score = ts.crps_gaussian(mu_t, sig_t, torch.tensor(y))
    ref, (dmu, dsig) = ps.crps_gaussian(y, mu, sig, grad=True)
    np.testing.assert_allclose(score.detach().numpy(), ref, rtol=1e-12)
    score.sum().backward()
    np.testing.assert_allclose(mu_t.grad.numpy(), dmu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sig_t.grad.numpy(), dsig, rtol=1e-10, atol=1e-12)
    # a numpy observation with tensor parameters still gives a tensor with gradients
    assert ts.crps_gaussian(mu_t, 1.0, y, reduce_dims="all").requires_grad


@pytest.mark.parametrize("fair", [False, True])
def test_energy_score_matches_scoringrules_and_the_numpy_path(fair):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 5, 4, 3)), rng.standard_normal((5, 4, 3))
    got = ts.energy_score(torch.tensor(x), torch.tensor(y), event_dims=[1, 2], fair=fair)
    ref = sr.es_ensemble(y.reshape(5, 12), np.moveaxis(x, 0, 1).reshape(5, 6, 12),
                         estimator="fair" if fair else "nrg", backend="numpy")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    x[1, 2, 0, 1], y[3, 1, 1] = np.nan, np.nan  # a member dropped at point 2, point 3 NaN
    dims = ("member", "t", "a", "b")
    want = sm.energy_score(xr.DataArray(x, dims=dims), xr.DataArray(y, dims=dims[1:]), event_dims=["a", "b"],
                           fair=fair, reduce_dims="t", weights=xr.DataArray(np.arange(1.0, 6.0), dims="t"))
    got = ts.energy_score(torch.tensor(x), torch.tensor(y), event_dims=[1, 2], fair=fair, reduce_dims=0,
                          weights=torch.arange(1.0, 6.0)[:, None, None])
    np.testing.assert_allclose(got.numpy(), want.values, rtol=1e-12)
    # the numpy path's axis names for arrays ("dim_k") mean the same axes
    np.testing.assert_allclose(ts.energy_score(torch.tensor(x), torch.tensor(y), event_dims=["dim_1", "dim_2"],
                                               reduce_dims="dim_0").numpy(),
                               sm.energy_score(x, y, event_dims=["dim_1", "dim_2"], reduce_dims=[0]), rtol=1e-12)
    # no event axes: the energy score is the CRPS
    np.testing.assert_allclose(ts.energy_score(torch.tensor(x), torch.tensor(y), fair=fair).numpy(),
                               ts.crps_ensemble(torch.tensor(x), torch.tensor(y), fair=fair).numpy(),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fair", [False, True])
def test_gradients_match_finite_differences(fair):
    """torch.autograd.gradcheck (float64) of the CRPS (with a dropped NaN member) and energy score,
    in the forecast and the observation; continuous random data has no ties."""
    x, y = _case(4, m=5, shape=(6,), nan=False)
    x[2, 1] = np.nan
    xt, yt = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ts.crps_ensemble(a, b, fair=fair, reduce_dims="all"), (xt, yt))
    xe = torch.randn(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    ye = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ts.energy_score(a, b, event_dims=-1, fair=fair), (xe, ye))


def test_nan_points_give_zero_not_nan_gradients():
    """A NaN observation or member makes its score NaN, skipped by the mean; the gradient of the
    other points is exact and nothing becomes NaN."""
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, math.nan, 0.5]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.5, math.nan, 1.0], dtype=torch.float64)
    for fn in (ts.crps_ensemble, ts.energy_score):
        x.grad = None
        fn(x, y, reduce_dims="all").backward()
        # mean of points 0 and 2 (point 1 is NaN); at point 0 (a, b, y) = (0, 1, 0.5) and the score
        # (|a - y| + |b - y|) / 2 - |a - b| / 4 has d/da = -1/2 + 1/4, d/db = 1/2 - 1/4; halved by the mean
        assert torch.isfinite(x.grad).all()
        assert float(x.grad[0, 1]) == 0.0 and float(x.grad[1, 1]) == 0.0
        torch.testing.assert_close(x.grad[:, 0], torch.tensor([-0.125, 0.125], dtype=torch.float64))


N_FIT = 2000
M_TRUE, S_TRUE = 1.5, 0.7


def _fit(loss, steps=200):
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # (mu, log sigma)
    opt = torch.optim.LBFGS([params], lr=1, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss(params[0], params[1].exp())
        value.backward()
        return value

    opt.step(closure)
    return float(params[0].detach()), float(params[1].detach().exp())


def test_gradient_descent_on_the_crps_recovers_the_gaussian():
    """Fit (mu, log sigma) to N = 2000 draws of N(1.5, 0.7^2) by minimising the mean CRPS, (a) in
    closed form and (b) of 8 reparametrised members mu + sigma z (z fixed, fair estimator). CRPS is
    strictly proper, so the minimiser estimates (1.5, 0.7); its standard error (Monte Carlo of the
    closed-form estimator, 150 replicates) is 1.02 s/sqrt(N) for mu and 0.79 s/sqrt(N) for sigma.
    Tolerance: 4 standard errors (a), 5 for (b), whose fixed members add sampling noise. The
    closed-form fit must also equal the exact sample minimiser (scipy on properscoring) to 1e-6."""
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(7)
    y = M_TRUE + S_TRUE * torch.randn(N_FIT, generator=g, dtype=torch.float64)
    z = torch.randn(8, N_FIT, generator=g, dtype=torch.float64)
    se_mu, se_s = 1.02 * S_TRUE / math.sqrt(N_FIT), 0.79 * S_TRUE / math.sqrt(N_FIT)

    mu, s = _fit(lambda m, sd: ts.crps_gaussian(m, sd, y, reduce_dims="all"))
    assert abs(mu - M_TRUE) < 4 * se_mu and abs(s - S_TRUE) < 4 * se_s
    yn = y.numpy()
    exact = minimize(lambda p: ps.crps_gaussian(yn, p[0], abs(p[1])).mean(), [1.0, 1.0], method="Nelder-Mead",
                     options={"xatol": 1e-9, "fatol": 1e-14, "maxiter": 4000}).x
    assert mu == pytest.approx(exact[0], abs=1e-6) and s == pytest.approx(abs(exact[1]), abs=1e-6)

    mu_e, s_e = _fit(lambda m, sd: ts.crps_ensemble(m + sd * z, y, fair=True, reduce_dims="all"))
    assert abs(mu_e - M_TRUE) < 5 * se_mu and abs(s_e - S_TRUE) < 5 * se_s
    # the standard (ECDF) estimator of two members is not proper for the distribution: its
    # minimiser is far too narrow, which the fair estimator corrects
    _, s_std = _fit(lambda m, sd: ts.crps_ensemble(m + sd * z[:2], y, reduce_dims="all"))
    assert s_std < S_TRUE - 20 * se_s


def test_torch_path_decorator_sends_grad_and_device_tensors_to_torch():
    """``torch_path`` around the public numpy metric: a tensor that requires grad keeps its graph;
    a plain CPU tensor takes the (faster) numpy kernel and still comes back a tensor; numpy stays
    numpy; the values agree."""
    crps = ts.torch_path("crps_ensemble")(sm.crps_ensemble)
    x, y = _case(8, nan=False)
    xt = torch.tensor(x, requires_grad=True)
    out = crps(xt, torch.tensor(y), reduce_dims="all")
    assert isinstance(out, torch.Tensor) and out.grad_fn is not None
    plain = crps(torch.tensor(x), torch.tensor(y), reduce_dims="all")
    assert isinstance(plain, torch.Tensor) and plain.grad_fn is None
    ref = crps(x, y, reduce_dims="all")
    assert isinstance(ref, np.ndarray)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(plain.numpy(), ref, rtol=1e-12)
    assert ts.wants_torch(x, torch.zeros(1, requires_grad=True)) and not ts.wants_torch(x, torch.zeros(1))


def test_bad_input_is_named():
    x, y = torch.zeros(3, 4, 2), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="observation shape"):
        ts.crps_ensemble(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="member axis 3 is out of range"):
        ts.crps_ensemble(x, y, member_dim=3)
    with pytest.raises(ValueError, match="reduce_dims axis 2 is out of range"):
        ts.crps_ensemble(x, y, reduce_dims=[2])
    with pytest.raises(ValueError, match="integer axes"):
        ts.crps_ensemble(x, y, reduce_dims="lat")
    with pytest.raises(ValueError, match="weights were given but reduce_dims is None"):
        ts.crps_ensemble(x, y, weights=torch.ones(2))
    with pytest.raises(ValueError, match="weights contain NaN"):
        ts.crps_ensemble(x, y, reduce_dims=1, weights=torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="reduce_dims axis 1 is an event axis"):
        ts.energy_score(x, y, event_dims=1, reduce_dims=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_agree_in_value_and_gradient():
    x, y = _case(9, m=10, shape=(64, 8), nan=True)
    w = torch.linspace(0.5, 1.5, 8, dtype=torch.float64)
    results = []
    for dev in ("cpu", "cuda"):
        xt = torch.tensor(x, device=dev, requires_grad=True)
        yt = torch.tensor(y, device=dev)
        vals = [ts.crps_ensemble(xt, yt, reduce_dims="all", weights=w.to(dev)),
                ts.crps_ensemble(xt, yt, fair=True, reduce_dims=0),
                ts.energy_score(xt, yt, event_dims=-1, fair=True, reduce_dims="all"),
                ts.crps_gaussian(xt[0].nan_to_num(), 1.0 + xt[1].nan_to_num().abs(), yt)]
        assert all(v.device.type == dev for v in vals)
        total = sum(v.nansum() for v in vals)
        (grad,) = torch.autograd.grad(total, xt)
        results.append([v.detach().cpu() for v in vals] + [grad.cpu()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)
