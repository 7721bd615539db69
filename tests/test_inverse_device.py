"""Posterior sampling on the denoiser's device: every method on CUDA matches the CPU run from the
same start (skipped without a GPU), and the device plumbing of operators and observations."""

import pytest
import torch
from torch import nn

from sciffusion.inverse import Box, Coarsen, Linear, Mask, SparseSensors, sample
from sciffusion.inverse.operators import Observation, Operator, module_device

F64 = torch.float64
EVENT = (2, 4, 4)


class GaussianPrior(nn.Module):
    """Exact denoiser of N(mean, s^2 I): D(x, sigma) = mean + s^2 / (s^2 + sigma^2) (x - mean)."""

    def __init__(self, s: float = 1.5):
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1, 1, 32, dtype=F64).reshape(EVENT))
        self.register_buffer("s2", torch.tensor(s * s, dtype=F64))
        self.event_shape = EVENT

    def forward(self, x, sigma):
        k = self.s2 / (self.s2 + sigma.reshape(-1, 1, 1, 1) ** 2)
        return self.mean + k * (x - self.mean)


def _problem():
    op = SparseSensors((4, 4), num=6, seed=0, channels=[1])
    y = torch.linspace(-0.5, 0.5, 6, dtype=F64)[None]
    return op, y


def test_module_device_is_the_first_parameter_or_buffer_and_cpu_otherwise():
    assert module_device(GaussianPrior()) == torch.device("cpu")
    assert module_device(lambda x: x) == torch.device("cpu")
    assert module_device(nn.Identity(), default="meta") == torch.device("meta")


def test_module_device_looks_through_guidance_and_projection_wrappers():
    """A denoiser on another device (here "meta") wrapped by DPS, then by a projection, still
    reports that device, so inverse.sample(..., device=None) runs where the model is."""
    from sciffusion.inverse.guidance import DPS
    from sciffusion.inverse.projection import NonNegative, ProjectedDenoiser

    net = nn.Linear(2, 2, device="meta")
    op, y = _problem()
    wrapped = ProjectedDenoiser(DPS(net, Observation(op, y, 0.1, EVENT)), NonNegative())
    assert module_device(wrapped) == torch.device("meta")
    assert module_device(ProjectedDenoiser(lambda x, s: x, NonNegative())) == torch.device("cpu")


def test_observation_gram_diag_on_its_device_also_for_a_user_operator_without_device_argument():
    class Double(Operator):  # a user operator overriding gram_diag the old way (no device=)
        linear = True

        def forward(self, x):
            return 2 * x.reshape(x.shape[0], -1)[:, :3]

        def gram_diag(self, event_shape, dtype=F64):
            return torch.full((3,), 4.0, dtype=dtype)

    obs = Observation(Double(), torch.zeros(3), 0.1, (6,), device="cpu")
    torch.testing.assert_close(obs.gram_diag(), torch.full((3,), 4.0, dtype=F64))
    # built-in operators: the closed forms agree with the generic VJP computation
    for op in (Mask(torch.arange(32).reshape(EVENT) % 3 == 0), SparseSensors((4, 4), num=5, channels=[0]),
               Coarsen(2), Linear(torch.randn(5, 32, dtype=F64, generator=torch.Generator().manual_seed(0)))):
        torch.testing.assert_close(op.gram_diag(EVENT, device="cpu"), Operator.gram_diag(op, EVENT))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["dps", "pigdm", "mmps", "projected", "residual"])
def test_guided_samplers_on_cuda_match_the_cpu_run_from_the_same_start(method):
    op, y = _problem()
    x0 = 80.0 * torch.randn((3, *EVENT), dtype=F64, generator=torch.Generator().manual_seed(1))
    opts = {"projection": Box(-3, 3)} if method == "projected" else {}
    if method == "residual":
        opts = {"residual": lambda x: x[:, 0] - x[:, 1], "zeta_obs": 1.0, "zeta_pde": 0.5}
    out = {}
    for device in ("cpu", "cuda"):
        prior = GaussianPrior().to(device)
        op_d = SparseSensors((4, 4), num=6, seed=0, channels=[1])
        out[device] = sample(prior, op_d, y, noise_std=0.1, guidance=method, n_members=3, steps=12,
                             sampler="heun", dtype=F64, x=x0.to(device), **opts)
        assert out[device].device.type == device
        assert op_d.flat_index.device.type == "cpu"  # the caller's operator is copied, not moved
    torch.testing.assert_close(out["cuda"].cpu(), out["cpu"], rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_smc_on_cuda_runs_on_the_device_and_fits_the_observations():
    op, y = _problem()
    prior = GaussianPrior().cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = sample(prior, op, y, noise_std=0.1, guidance="smc", n_members=64, steps=20, particles=64,
               generator=gen, dtype=F64)
    assert x.device.type == "cuda" and torch.isfinite(x).all()
    assert x.info.log_z.device.type == "cuda"
    misfit = float(((op(x) - y.cuda()) ** 2).mean())
    assert misfit < 0.1, misfit  # sigma_y = 0.1; prior draws have a mean squared misfit of about 2.7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_darcy_solve_and_its_gradient_on_cuda_match_the_cpu():
    """darcy_solve factorises on the host: CUDA inputs come back on CUDA with the CPU values and gradient."""
    from sciffusion.physics import darcy_solve

    a = 3 + 9 * torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    w = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = {}
    for device in ("cpu", "cuda"):
        x = a.to(device).requires_grad_(True)
        u = darcy_solve(x)
        (g,) = torch.autograd.grad((u * w.to(device)).sum(), x)
        assert u.device.type == device and g.device.type == device
        out[device] = (u.detach().cpu(), g.cpu())
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=1e-12, atol=1e-15)
