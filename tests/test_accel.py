"""Speed options (issue 8): bf16 autocast, channels-last and torch.compile behind `accelerate`
and the Trainer, defaulting to the exact path on CPU."""

import pytest
import torch

from sciffusion.diffusion import Accelerated, Denoiser, accelerate, draw_noise, edm_loss, sample
from sciffusion.diffusion.accel import resolve
from sciffusion.nets import UNet2d
from sciffusion.training import TensorPairs, Trainer


def _den(seed=0):
    torch.manual_seed(seed)
    den = Denoiser(UNet2d(1, cond_channels=1, channels=[8, 16], blocks_per_level=1, attention_levels=[], groups=4))
    with torch.no_grad():  # the output layer starts at zero; give every weight a value so the net matters
        for p in den.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return den


def test_auto_is_the_plain_denoiser_on_cpu_and_bf16_on_cuda():
    den = _den()
    assert accelerate(den) is den  # nothing to wrap: the default CPU path is bit for bit the plain one
    assert resolve(device="cpu") == {"precision": None, "channels_last": False, "compile": False}
    assert resolve(device="cuda")["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        accelerate(den, precision="fp16")
    with pytest.raises(ValueError, match="channels_last"):
        accelerate(den, channels_last="yes")


def test_bf16_autocast_changes_the_network_precision_but_not_the_sampler_dtype():
    den = _den()
    x, c, s = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16), torch.full((3,), 0.7)
    ref = den(x, s, cond=c)
    fast = accelerate(den, precision="bf16")
    out = fast(x, s, cond=c)
    assert out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert 0 < rel < 2e-2, rel  # bf16 has 8 mantissa bits: close, but not identical (autocast really ran)
    members = sample(fast, (3, 1, 16, 16), cond=c, steps=4, generator=torch.Generator().manual_seed(0))
    assert members.dtype == torch.float32 and torch.isfinite(members).all()


def test_channels_last_gives_the_same_numbers():
    den = _den()
    x, c, s = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.full((2,), 2.0)
    ref = den(x, s, cond=c)
    out = Accelerated(den, channels_last=True)(x, s, cond=c)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_compile_wraps_the_backbone_without_touching_the_callers_denoiser(monkeypatch):
    compiled = []

    def fake_compile(module, **kwargs):  # torch.compile itself takes ~30 s on this CPU: check the wiring
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    den = _den()
    net = den.net
    fast = accelerate(den, compile=True)
    assert compiled == [net] and den.net is net and fast.inner is not den and fast.inner.net is net
    x, c, s = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.full((2,), 1.0)
    torch.testing.assert_close(fast(x, s, cond=c), den(x, s, cond=c), rtol=0, atol=0)


def test_edm_loss_with_caller_noise_equals_the_generator_draw():
    den = _den()
    x0, c = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    a = edm_loss(den, x0, cond=c, generator=torch.Generator().manual_seed(3))
    noise = draw_noise(x0.shape, generator=torch.Generator().manual_seed(3))
    b = edm_loss(den, x0, cond=c, noise=noise)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="noise"):
        edm_loss(den, x0, cond=c, noise=(noise[0][:2], noise[1]))


def test_trainer_channels_last_follows_the_default_trajectory_and_residual_enters_the_loss():
    x, c = torch.randn(16, 1, 16, 16), torch.randn(16, 1, 16, 16)
    kw = dict(batch_size=8, progress=False, warmup_steps=1, lr=1e-3)
    plain = Trainer(_den(), TensorPairs(x, c), **kw)
    cl = Trainer(_den(), TensorPairs(x, c), channels_last=True, **kw)
    la = [plain.train_step() for _ in range(3)]
    lb = [cl.train_step() for _ in range(3)]
    assert la == pytest.approx(lb, rel=1e-4)

    def residual(x0_hat):  # penalise the field's mean: a linear "PDE residual"
        return x0_hat.mean(dim=(1, 2, 3), keepdim=True)

    pidm = Trainer(_den(), TensorPairs(x, c), residual=residual, residual_weight=0.5, **kw)
    batch = {"x": x[:8], "cond": c[:8]}
    got = pidm._loss(pidm.model, batch, torch.Generator().manual_seed(1))
    want = edm_loss(pidm.model, x[:8], cond=c[:8], generator=torch.Generator().manual_seed(1),
                    residual=residual, residual_weight=0.5)
    base = edm_loss(pidm.model, x[:8], cond=c[:8], generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want) and got > base
    with pytest.raises(ValueError, match="residual"):
        Trainer(_den(), TensorPairs(x, c), residual_weight=0.5, **kw)
