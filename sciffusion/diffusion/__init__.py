"""The generative core: noise levels, EDM preconditioning, the EDM loss and samplers."""

from sciffusion.diffusion.accel import Accelerated, accelerate
from sciffusion.diffusion.denoiser import Denoiser
from sciffusion.diffusion.loss import draw_noise, edm_loss
from sciffusion.diffusion.sample import (
    METHODS,
    CountingDenoiser,
    DPMSolver2M,
    ddim_step,
    euler_step,
    heun_step,
    member_generators,
    randn,
    sample,
    step_function,
    step_options,
    stochastic_step,
)
from sciffusion.diffusion.schedules import SIGMA_MAX, karras_sigmas

__all__ = [
    "Accelerated",
    "accelerate",
    "draw_noise",
    "METHODS",
    "CountingDenoiser",
    "Denoiser",
    "DPMSolver2M",
    "ddim_step",
    "edm_loss",
    "euler_step",
    "heun_step",
    "karras_sigmas",
    "member_generators",
    "randn",
    "sample",
    "SIGMA_MAX",
    "step_function",
    "step_options",
    "stochastic_step",
]
