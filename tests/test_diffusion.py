"""The diffusion core: noise levels, EDM preconditioning, the EDM loss and the samplers."""

import math

import pytest
import torch

from sciffusion.diffusion import (
    CountingDenoiser,
    Denoiser,
    draw_noise,
    edm_loss,
    karras_sigmas,
    member_generators,
    sample,
)
from sciffusion.testing import grid_mixture, sliced_wasserstein

# (method, steps, options) -> each must reproduce the mixture within 2x of the two-sample floor.
SAMPLERS = [
    ("heun", 20, {}),  # 39 NFE
    ("euler", 100, {}),
    ("stochastic", 40, {"churn": 30.0}),
    ("ddim", 100, {"eta": 1.0}),
    ("dpmpp2m", 40, {}),
]
SIGMA_MAX = 2000.0  # well above the data scale (means reach |16| per coordinate, 143 in norm at d=80)


def test_karras_sigmas_endpoints_monotone_and_formula():
    s = karras_sigmas(10, 0.01, 50.0, 7.0)
    assert len(s) == 11 and s[-1] == 0 and float(s[0]) == pytest.approx(50.0) and float(s[-2]) == pytest.approx(0.01)
    assert bool((s[:-1] > s[1:]).all())
    i = 4
    expected = (50 ** (1 / 7) + i / 9 * (0.01 ** (1 / 7) - 50 ** (1 / 7))) ** 7
    assert float(s[i]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(5, 1.0, 0.5)


def test_denoiser_preconditioning_matches_edm_table():
    """c_skip, c_out, c_in, c_noise of EDM table 1; a zero network gives D = c_skip x."""

    class Zero(torch.nn.Module):
        def forward(self, x, c_noise, cond=None):
            self.seen = (x, c_noise)
            return torch.zeros_like(x)

    net = Zero()
    den = Denoiser(net, sigma_data=0.5)
    x = torch.randn(3, 2)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    out = den(x, sigma)
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(out, c_skip[:, None] * x)
    torch.testing.assert_close(net.seen[0], x / (sigma[:, None] ** 2 + 0.25).sqrt())
    torch.testing.assert_close(net.seen[1], sigma.log() / 4)
    _, c_out, _, _ = den.scalings(sigma)
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())


def test_edm_loss_of_the_exact_gaussian_denoiser_is_one():
    """For x0 ~ N(0, s_d^2) the optimal denoiser's EDM-weighted error is exactly 1 at every sigma."""
    sd = 0.7

    def exact(x, sigma, cond=None):
        return (sd**2 / (sigma**2 + sd**2))[:, None] * x

    g = torch.Generator().manual_seed(0)
    x0 = sd * torch.randn(20000, 8, generator=g, dtype=torch.float64)
    per = edm_loss(exact, x0, sigma_data=sd, generator=g, reduce=False)
    assert float(per.mean()) == pytest.approx(1.0, abs=4 * float(per.std()) / math.sqrt(len(per)))


def test_edm_loss_ignores_masked_points_and_weights_channels():
    """Values at masked points never change the loss; channel weights scale their channel's error."""

    def den(x, sigma, cond=None):
        return 0.5 * x

    x0 = torch.randn(4, 2, 3, 3)
    mask = torch.ones_like(x0)
    mask[:, 1, 0, 0] = 0
    a = edm_loss(den, x0, mask=mask, generator=torch.Generator().manual_seed(1))
    x0b = x0.clone()
    x0b[:, 1, 0, 0] = 1e6
    b = edm_loss(den, x0b, mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    w0 = edm_loss(den, x0, channel_weights=torch.tensor([1.0, 0.0]), generator=torch.Generator().manual_seed(2))
    w1 = edm_loss(den, x0, channel_weights=torch.tensor([0.0, 1.0]), generator=torch.Generator().manual_seed(2))
    both = edm_loss(den, x0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(w0 + w1, both)
    assert float(w0) > 0 and float(w1) > 0


@pytest.mark.parametrize("d", [2, 80])
@pytest.mark.parametrize("method,steps,options", SAMPLERS)
def test_sampler_with_exact_denoiser_reproduces_the_mixture(d, method, steps, options):
    """Sliced W1 (2000 samples, 1000 directions) to an exact sample set within 2x of the
    distance between independent exact sets (the two-sample floor, mean of three draws)."""
    gm = grid_mixture(d, seed=1)
    ref = gm.sample(2000, torch.Generator().manual_seed(1))
    floor = sum(sliced_wasserstein(ref, gm.sample(2000, torch.Generator().manual_seed(s)), 1000) for s in (2, 3, 4)) / 3
    den = CountingDenoiser(gm)
    x = sample(den, (2000, d), steps=steps, method=method, sigma_max=SIGMA_MAX,
               generator=torch.Generator().manual_seed(3), dtype=torch.float64, **options)
    ratio = sliced_wasserstein(x, ref, 1000) / floor
    assert ratio < 2.0, f"{method}: SW/floor = {ratio:.2f} at {den.nfe} NFE"
    if method == "heun":
        assert den.nfe <= 40


def test_sampler_without_enough_noise_range_is_caught_by_the_yardstick():
    """The yardstick can fail: a too-small sigma_max leaves mode weights wrong at d=80."""
    gm = grid_mixture(80, seed=1)
    ref = gm.sample(2000, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(ref, gm.sample(2000, torch.Generator().manual_seed(2)), 1000)
    x = sample(gm, (2000, 80), steps=20, sigma_max=20.0, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert sliced_wasserstein(x, ref, 1000) / floor > 3


def test_ddim_with_eta_zero_is_euler():
    gm = grid_mixture(2, seed=0)
    a = sample(gm, (50, 2), steps=12, method="ddim", eta=0.0, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = sample(gm, (50, 2), steps=12, method="euler", generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("method", ["heun", "stochastic", "ddim"])
def test_member_k_is_the_same_draw_whatever_the_batch(method):
    """Per-member generators: members 3..5 drawn alone equal members 3..5 of a 10-member run."""
    gm = grid_mixture(2, seed=0)
    full = sample(gm, (10, 2), steps=8, method=method, generator=member_generators(7, 10), dtype=torch.float64)
    part = sample(gm, (3, 2), steps=8, method=method, generator=member_generators(7, [3, 4, 5]), dtype=torch.float64)
    torch.testing.assert_close(part, full[3:6], rtol=0, atol=0)
    other_seed = sample(gm, (3, 2), steps=8, method=method, generator=member_generators(8, [3, 4, 5]), dtype=torch.float64)
    assert not torch.equal(other_seed, part)


def test_conditioning_kwargs_reach_the_denoiser_and_callback_sees_every_step():
    seen, steps_seen = [], []

    def den(x, sigma, cond=None):
        seen.append(cond)
        return torch.zeros_like(x)

    sample(den, (2, 3), steps=5, method="euler", cond="c", callback=lambda s: steps_seen.append(s["i"]))
    assert seen == ["c"] * 5 and steps_seen == list(range(5))


def test_bad_method_and_sigmas_are_named():
    with pytest.raises(ValueError, match="unknown sampler method 'rk9'"):
        sample(lambda x, s: x, (1, 1), method="rk9")
    with pytest.raises(ValueError, match="decreasing"):
        sample(lambda x, s: x, (1, 1), sigmas=torch.tensor([1.0, 2.0, 0.0]))


def _narrow_gaussian(mu=1.0, tau=0.7):
    """Exact denoiser of N(mu, tau^2) (one coordinate): E[x0 | x] = (tau^2 x + sigma^2 mu) / (tau^2 + sigma^2)."""
    return lambda x, s, **_: (tau**2 * x + s[:, None] ** 2 * mu) / (tau**2 + s[:, None] ** 2)


def _moments(method, steps, start="noise", n=200_000, sigma_max=10.0):
    den = CountingDenoiser(_narrow_gaussian())
    x = sample(den, (n, 1), steps=steps, method=method, sigma_max=sigma_max, start=start,
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return float(x.mean()), float(x.var()) / 0.49, den.nfe


def test_dpmpp2m_is_second_order_and_beats_heun_at_equal_network_calls_on_a_narrow_gaussian():
    """N(1, 0.7^2) from sigma_max = 10, exact denoiser: the variance error of DPM-Solver++(2M)
    shrinks ~4x when the steps double (2nd order), and at 16 calls it is within 8% where Heun's
    8 steps (15 calls) inflate the variance by ~30%; the step is 1 NFE."""
    _, v16, nfe16 = _moments("dpmpp2m", 16)
    _, v32, _ = _moments("dpmpp2m", 32)
    _, v_heun, nfe_heun = _moments("heun", 8)
    assert nfe16 == 16 and nfe_heun == 15
    assert abs(v16 - 1) < 0.08 and abs(v_heun - 1) > 0.2, (v16, v_heun)
    assert abs(v32 - 1) < 0.35 * abs(v16 - 1), (v16, v32)


def test_dpmpp2m_first_step_is_ddim_and_each_call_starts_afresh():
    """With no previous estimate the 2M step is DDIM (eta = 0); a second sample() call does not
    reuse the first call's last estimate (same seed, same result)."""
    from sciffusion.diffusion import DPMSolver2M, ddim_step

    gm = grid_mixture(2, seed=0)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    s, s_next = torch.tensor(20.0, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64)
    a = DPMSolver2M()(gm, x, s, s_next, noise=None, cond={})
    b = ddim_step(gm, x, s, s_next, noise=None, cond={}, eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    kw = dict(steps=6, method="dpmpp2m", dtype=torch.float64)
    first = sample(gm, (4, 2), generator=torch.Generator().manual_seed(1), **kw)
    again = sample(gm, (4, 2), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(first, again)


def test_centred_start_removes_the_mean_shift_of_zero_mean_noise():
    """From sigma_max = 10, zero-mean starting noise shifts N(1, 0.7^2) samples by about
    -mu tau / sigma_max (-0.08 here); the centred start (one more call) brings that under 0.01."""
    m_plain, _, nfe_plain = _moments("heun", 12)
    m_centred, v_centred, nfe_centred = _moments("heun", 12, start="centred")
    assert -0.1 < m_plain - 1 < -0.05, m_plain
    assert abs(m_centred - 1) < 0.01 and abs(v_centred - 1) < 0.15, (m_centred, v_centred)
    assert nfe_centred == nfe_plain + 1
    with pytest.raises(ValueError, match="start must be"):
        sample(_narrow_gaussian(), (2, 1), start="mean")


def _crps_case():
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)

    def den(x, sigma, cond=None):  # shrinks towards 0 more at higher noise; cond shifts it
        out = x / (1 + sigma[:, None] ** 2)
        return out if cond is None else out + cond

    return x0, den


def test_edm_loss_without_crps_term_is_the_plain_edm_loss_and_draws_nothing_more():
    """crps_weight=0 (the default): exactly lambda(sigma) * mean (D - x0)^2, and the generator is
    left where the (sigma, eps) draw leaves it."""
    x0, den = _crps_case()
    g = torch.Generator().manual_seed(3)
    got = edm_loss(den, x0, generator=g, crps_members=4)
    after = torch.rand(1, generator=g, dtype=torch.float64)
    g2 = torch.Generator().manual_seed(3)
    sigma, eps = draw_noise(x0.shape, generator=g2, dtype=x0.dtype)
    err = (den(x0 + sigma[:, None] * eps, sigma) - x0) ** 2
    want = ((sigma**2 + 1.0) / sigma**2 * err.mean(1)).mean()
    assert torch.equal(got, want) and torch.equal(after, torch.rand(1, generator=g2, dtype=torch.float64))


def test_edm_loss_crps_term_equals_the_fair_crps_of_the_denoised_members():
    """crps_weight=c, K=3: per sample c * mean_points[ mean_k |D_k - x0| - sum_kl |D_k - D_l| / (2 K (K-1)) ]
    is added, with D_1 at the MSE term's eps and D_2, D_3 at the next draw of the generator."""
    x0, den = _crps_case()
    cond = torch.tensor([[0.1], [-0.2]], dtype=torch.float64)
    cw = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    got = edm_loss(den, x0, cond=cond, channel_weights=cw, generator=torch.Generator().manual_seed(4),
                   crps_weight=0.5, crps_members=3, reduce=False)
    base = edm_loss(den, x0, cond=cond, channel_weights=cw, generator=torch.Generator().manual_seed(4), reduce=False)
    g = torch.Generator().manual_seed(4)
    sigma, eps = draw_noise(x0.shape, generator=g, dtype=x0.dtype)
    extra = torch.randn((2, *x0.shape), generator=g, dtype=x0.dtype)
    members = torch.stack([den(x0 + sigma[:, None] * e, sigma, cond=cond) for e in (eps, extra[0], extra[1])])
    skill = (members - x0).abs().mean(0)
    pairs = (members[:, None] - members[None, :]).abs().sum((0, 1))
    crps = skill - pairs / (2 * 3 * 2)
    torch.testing.assert_close(got, base + 0.5 * (crps * cw).mean(1), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="crps_members must be an integer >= 2"):
        edm_loss(den, x0, crps_weight=0.5, crps_members=1)


def test_a_temperature_scales_the_draw_before_a_centred_start_so_the_mean_stays():
    """sample(temperature=2, start="centred") on a narrow law far from 0: the samples' spread doubles and
    their mean stays (scaling the centred state instead, as a step wrapper would, moves the mean to ~2 mu);
    temperature 1 is the plain sampler bit for bit, and a non-positive one is refused."""
    from sciffusion.testing import GaussianMixture

    gm = GaussianMixture(torch.tensor([1.0]), torch.tensor([[6.0, -3.0]]), 0.5)
    kw = dict(steps=32, method="dpmpp2m", sigma_max=10.0, start="centred", dtype=torch.float64)
    plain = sample(gm, (4000, 2), generator=torch.Generator().manual_seed(0), **kw)
    hot = sample(gm, (4000, 2), generator=torch.Generator().manual_seed(0), temperature=2.0, **kw)
    assert abs(float(hot.std(0).mean() / plain.std(0).mean()) - 2) < 0.05
    assert float((hot.mean(0) - torch.tensor([6.0, -3.0], dtype=torch.float64)).abs().max()) < 0.1  # noise start: 0.4 off
    one = sample(gm, (8, 2), generator=torch.Generator().manual_seed(0), temperature=1.0, **kw)
    torch.testing.assert_close(one, plain[:8], rtol=0, atol=0)
    with pytest.raises(ValueError, match="temperature"):
        sample(gm, (8, 2), temperature=0.0, **kw)
