"""Kolmogorov flow: exact solutions, time-step convergence order, energy budget, batching."""

import math

import pytest
import torch

from sciffusion.systems import KolmogorovFlow


def test_laminar_kolmogorov_profile_is_a_fixed_point():
    """omega = -A k cos(k y) / (nu k^2 + mu) is steady: the nonlinear term of a shear flow vanishes."""
    s = KolmogorovFlow(n=32, reynolds=20.0, drag=0.1, k_forcing=4)
    y = torch.arange(32, dtype=torch.float64) * (2 * math.pi / 32)
    w = (-4 * torch.cos(4 * y) / (4**2 / 20.0 + 0.1))[:, None].expand(32, 32)[None]
    torch.testing.assert_close(s.step(w, 50), w, atol=1e-12, rtol=0)
    _, spec = s.energy_spectrum(w)
    assert spec[4] / spec.sum() > 1 - 1e-12  # all energy in the forcing shell


def test_single_mode_decays_at_the_viscous_plus_drag_rate():
    s = KolmogorovFlow(n=16, reynolds=10.0, drag=0.2, amplitude=0.0, dt=0.05)
    x = torch.arange(16, dtype=torch.float64) * (2 * math.pi / 16)
    w = torch.cos(x[None, :] + 2 * x[:, None])[None]  # |k|^2 = 5
    out = s.step(w, 20)  # t = 1
    torch.testing.assert_close(out, w * math.exp(-(5 / 10.0 + 0.2)), atol=1e-12, rtol=0)


def test_observed_time_convergence_order_is_four():
    s_ref = KolmogorovFlow(n=32, reynolds=50.0, dt=0.005)
    w0 = 3.0 * s_ref.random_field(1, torch.Generator().manual_seed(0))
    ref = s_ref.step(w0, 80)  # t = 0.4
    errs = []
    for dt in (0.04, 0.02):
        s = KolmogorovFlow(n=32, reynolds=50.0, dt=dt)
        errs.append(float((s.step(w0, round(0.4 / dt)) - ref).abs().max()))
    order = math.log2(errs[0] / errs[1])
    assert 3.5 < order < 4.6, (errs, order)


def test_energy_budget_closes_instantaneously():
    """dE/dt (central difference) equals injection - dissipation - 2 mu E."""
    s = KolmogorovFlow(n=32, reynolds=100.0, dt=1e-3)
    w = 3.0 * s.random_field(2, torch.Generator().manual_seed(1))
    e_minus = s.energy_budget(w)["energy"]
    w1 = s.step(w, 1)
    e_plus = s.energy_budget(s.step(w1, 1))["energy"]
    b = s.energy_budget(w1)
    dedt = (e_plus - e_minus) / (2 * s.dt)
    predicted = b["injection"] - b["dissipation"] - b["drag_loss"]
    torch.testing.assert_close(dedt, predicted, rtol=1e-5, atol=1e-8)


def test_members_evolve_independently_in_a_batch():
    s = KolmogorovFlow(n=16)
    w = s.random_field(3, torch.Generator().manual_seed(2))
    torch.testing.assert_close(s.step(w, 5)[1:2], s.step(w[1:2], 5), atol=1e-13, rtol=0)


def test_spectrum_sums_to_kinetic_energy():
    s = KolmogorovFlow(n=32)
    w = s.random_field(2, torch.Generator().manual_seed(3))
    _, spec = s.energy_spectrum(w)
    assert spec.sum() == pytest.approx(float(s.energy_budget(w)["energy"].mean()), rel=1e-10)


@pytest.mark.parametrize("kwargs,needle", [({"n": 7}, "n \\(grid size\\)"), ({"reynolds": -1}, "reynolds"),
                                           ({"n": 8, "k_forcing": 4}, "k_forcing")])
def test_bad_parameters_raise_errors_naming_them(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        KolmogorovFlow(**kwargs)


def test_float32_run_agrees_with_float64():
    """The dtype plumbing (spectral operators, ETDRK4 coefficients) works in single precision too."""
    s64, s32 = KolmogorovFlow(n=16), KolmogorovFlow(n=16, dtype=torch.float32)
    w = s64.random_field(1, torch.Generator().manual_seed(4))
    out32 = s32.step(w.float(), 20)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), s64.step(w, 20), atol=1e-4, rtol=0)
