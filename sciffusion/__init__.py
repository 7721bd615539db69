"""sciffusion: diffusion emulators, posterior samplers and ensemble verification for science.

Data flows one way: xarray in -> tensors -> denoiser -> sampler -> tensors -> xarray out ->
metrics -> plots. See ``shared/DESIGN.md`` for the contracts between the parts.
"""

__version__ = "0.1.0"
