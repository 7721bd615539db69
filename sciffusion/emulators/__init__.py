"""Emulation tasks built on the diffusion core: ensemble generation and SEEDS-style ensemble emulation.

- :func:`generate` / :class:`EnsembleStore`: many members per condition with stable per-member
  seeds, streamed to a resumable zarr store;
- :class:`EnsembleEmulator`: p(member | K seed members, lead time), in emulation or
  post-processing mode (``docs/emulation.md``), with :func:`calibrate_spread` for the spread knob
  and :func:`ensemble_skill` for the SEEDS skill table;
- :class:`Downscaler`: coarse fields -> fine-grid ensembles (CorrDiff-style residual diffusion,
  DDIM spread control, NaN masks), with the baselines :func:`coarsen` and :func:`upsample`
  (``docs/downscaling.md``);
- baselines a generative emulator must beat: :func:`raw_seeds`, :class:`GaussianAroundSeeds` and
  :class:`EMOS` (non-homogeneous Gaussian regression fitted by minimum CRPS);
- :class:`Rollout` (autoregressive EDM) and :class:`DYffusion` (interpolator + forecaster): long
  ensemble rollouts streamed to resumable zarr (``docs/rollout.md``).
"""

from sciffusion.emulators.members import generate
from sciffusion.emulators.store import EnsembleStore
from sciffusion.emulators.ensemble import EnsembleEmulator, TemperedStep
from sciffusion.emulators.calibrate import Calibration, calibrate_spread
from sciffusion.emulators.skill import ensemble_skill, format_table
from sciffusion.emulators.rollout import Rollout
from sciffusion.emulators.dyffusion import DYffusion
from sciffusion.emulators.coarsen import coarsen, upsample
from sciffusion.emulators.downscaler import Downscaler
from sciffusion.emulators.baselines import EMOS, GaussianAroundSeeds, fit_ngr, raw_seeds

__all__ = ["Calibration", "DYffusion", "Downscaler", "EMOS", "EnsembleEmulator", "EnsembleStore", "GaussianAroundSeeds",
           "TemperedStep", "calibrate_spread",
           "coarsen", "ensemble_skill", "fit_ngr", "format_table", "generate", "raw_seeds", "upsample", "Rollout"]
