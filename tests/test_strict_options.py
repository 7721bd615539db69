"""Sampler and guidance options bind strictly: a misspelt or inapplicable option raises TypeError
naming the valid ones, valid calls give the samples they gave before, and the temperature of
TemperedStep works with any sigma_max."""

import pytest
import torch

from sciffusion.diffusion import METHODS, sample, step_options
from sciffusion.diffusion.sample import OPTIONS
from sciffusion.emulators import TemperedStep
from sciffusion.inverse import METHODS as GUIDANCE_METHODS
from sciffusion.inverse import Box, Linear
from sciffusion.inverse import sample as posterior
from sciffusion.inverse.api import OPTIONS as GUIDANCE_OPTIONS
from sciffusion.testing import GaussianMixture, grid_mixture

F64 = torch.float64
GM = grid_mixture(2, seed=0)
A = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64)
Y = torch.tensor([3.0, -2.0], dtype=F64)
NEEDS = {"projected": {"projection": Box(-5, 5)}, "residual": {"residual": lambda x: x[:, :1] - x[:, 1:]}}


def _draw(method="heun", **kw):
    return sample(GM, (2, 2), steps=4, method=method, generator=torch.Generator().manual_seed(3), dtype=F64, **kw)


def _same(x, expected):
    torch.testing.assert_close(x, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


def _posterior(method, **kw):  # sigma_max as when the references were saved (the default now follows the prior's scale)
    return posterior(GM, Linear(A), Y, noise_std=0.5, guidance=method, n_members=2, steps=4, sigma_max=80.0,
                     generator=torch.Generator().manual_seed(3), dtype=F64, **{**NEEDS.get(method, {}), **kw})


@pytest.mark.parametrize("method", list(METHODS))
def test_every_sampler_refuses_a_misspelt_and_an_inapplicable_option_naming_its_options(method):
    valid = step_options(METHODS[method])
    with pytest.raises(TypeError, match=r"'chrun': did you mean 'churn'\?"):
        _draw(method, chrun=0.0)  # a near miss would otherwise reach the denoiser as conditioning
    other = next(k for k in OPTIONS if k not in valid)
    listed = ", ".join(valid) or "none"
    with pytest.raises(TypeError, match=rf"sampler '{method}' takes no option '{other}'; its options: {listed}\."):
        _draw(method, **{other: 0.5})


def test_a_step_function_takes_exactly_its_keyword_options():
    seen = []

    def damped(denoiser, x, sigma, sigma_next, *, noise, cond, eta=1.0):
        seen.append(eta)
        return denoiser(x, sigma.expand(x.shape[0]), **cond) if sigma_next == 0 else x * sigma_next / sigma

    _draw(damped, eta=0.25)
    assert seen == [0.25] * 4
    with pytest.raises(TypeError, match=r"sampler 'damped' takes no option 'churn'; its options: eta\."):
        _draw(damped, churn=1.0)
    with pytest.raises(TypeError, match="sampler 'heun' takes no option 'eta'"):  # a wrapper takes its step's options
        _draw(TemperedStep("heun", 1.5), eta=0.5)


def test_valid_calls_give_the_samples_of_before():
    """Values written by the pre-change code (float64, fixed seed); explicit defaults equal none."""
    ref = {
        ("heun", ()): [[22.066692709796342, 17.511233586596852], [9.90819070457142, -10.853111573194125]],
        ("stochastic", ()): [[9.732138614302588, -14.56850202307686], [24.100607879942014, 24.16666626994441]],
        ("stochastic", (("churn", 10.0), ("s_noise", 1.1), ("s_tmax", 50.0), ("s_tmin", 0.5))):
            [[27.785064548335278, 10.120864376937423], [14.079643890634241, -2.081929444927984]],
        ("ddim", (("eta", 0.3),)): [[8.153954639876947, 2.8466766737795672], [3.0172324666537147, 1.31636635377062]],
        ("dpmpp2m", ()): [[16.062498465740962, 10.256567401703181], [2.276930409343667, -4.689350910201438]],
    }
    for (method, kw), expected in ref.items():
        _same(_draw(method, **dict(kw)), expected)
    defaults = dict(churn=30.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0)
    assert torch.equal(_draw("stochastic"), _draw("stochastic", **defaults))
    assert torch.equal(_draw("ddim"), _draw("ddim", eta=1.0))
    tempered = [[25.57509027956126, 18.705077381263592], [8.488448553850082, -24.276408324635398]]
    _same(_draw(TemperedStep("heun", 1.5)), tempered)
    posterior_ref = {
        ("dps", (("zeta", 2.0),)):
            [[-5.2346356172222315, -12.455122057032856], [-3.5875999142355104, -11.155518105157364]],
        ("mmps", (("cg_iters", 1), ("churn", 5.0), ("sampler", "stochastic"))):
            [[5.374514479117525, 0.2918000772395264], [5.575387615084806, -0.5255574396788742]],
        ("smc", (("kernel", "gaussian"), ("particles", 1))):
            [[2.8369428333665168, -2.2455062588846326], [5.792828235562823, 2.909053589592049]],
        ("projected", (("cg_iters", 1), ("inner_guidance", "mmps"))):
            [[4.165362695652864, -1.963813410864625], [1.5071778709367576, -0.35183596621842295]],
        ("residual", (("eta", 0.5), ("sampler", "ddim"), ("zeta_pde", 0.5))):
            [[-5.15662613358605, -7.2978907601035905], [-1.2034719162712275, -4.723905878556266]],
    }
    for (method, kw), expected in posterior_ref.items():
        _same(_posterior(method, **dict(kw)), expected)


def test_ensemble_generation_refuses_an_inapplicable_option_before_the_first_draw():
    from sciffusion.emulators import generate

    calls = []

    def counting(x, sigma, **cond):
        calls.append(1)
        return GM(x, sigma, **cond)

    with pytest.raises(TypeError, match="sampler 'heun' takes no option 'churn'"):
        generate(counting, None, 4, event_shape=(2,), method="heun", churn=10.0, batch_size=2, progress=False)
    assert not calls


@pytest.mark.parametrize("method", GUIDANCE_METHODS)
def test_every_guidance_method_refuses_a_misspelt_option_naming_its_options(method):
    name = next(k for k in GUIDANCE_OPTIONS[method] if k not in NEEDS.get(method, {}))
    typo = name[:2] + name[3] + name[2] + name[4:]  # two letters swapped
    with pytest.raises(TypeError, match=rf"guidance method '{method}' takes no option '{typo}' \(did you mean "
                                        rf"'{name}'\?\); its options: {', '.join(GUIDANCE_OPTIONS[method])}"):
        _posterior(method, **{typo: 1})


def test_inapplicable_guidance_and_sampler_options_are_refused():
    with pytest.raises(TypeError, match=r"guidance method 'mmps' takes no option 'zeta'.*'dps' takes zeta"):
        _posterior("mmps", zeta=50)
    with pytest.raises(TypeError, match=r"'cg_itres' \(did you mean 'cg_iters'\?\)"):
        _posterior("mmps", cg_itres=1)
    with pytest.raises(TypeError, match=r"sampler 'ddim' takes no option 'churn'; its options: eta\."):
        _posterior("dps", churn=1.0)
    with pytest.raises(TypeError, match="'smc' takes no option 'eta'.*no sampler options"):
        _posterior("smc", eta=0.5)
    with pytest.raises(TypeError, match="runs its own DDPM-type kernel; it takes no sampler"):
        _posterior("smc", sampler="heun")
    with pytest.raises(TypeError, match="'projected' takes no option 'cg_iters'"):  # dps has no CG solve
        _posterior("projected", inner_guidance="dps", cg_iters=3)


@pytest.mark.parametrize("sigma_max", [50.0, 80.0])
@pytest.mark.parametrize("method", ["heun", "dpmpp2m"])
def test_temperature_scales_the_spread_at_any_sigma_max(sigma_max, method):
    """Exact denoiser of N(0, 0.5^2): the probability-flow step is linear in x, so a draw at
    temperature t is exactly t times the draw from the same noise at temperature 1."""
    gauss = GaussianMixture(torch.ones(1), torch.zeros(1, 1), 0.25)
    kw = dict(steps=32, sigma_max=sigma_max, dtype=F64)
    plain = sample(gauss, (4000, 1), method=TemperedStep(method, 1.0), generator=torch.Generator().manual_seed(0), **kw)
    hot = sample(gauss, (4000, 1), method=TemperedStep(method, 1.6), generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(hot, 1.6 * plain, rtol=1e-9, atol=1e-12)
    assert float(plain.std()) == pytest.approx(0.5, rel=0.04)  # 1% sampling error, ~1% from 32 steps
    assert float(hot.std()) == pytest.approx(0.8, rel=0.04)
