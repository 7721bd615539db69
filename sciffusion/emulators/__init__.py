"""Emulation tasks built on the diffusion core: ensemble generation and SEEDS-style ensemble emulation.

- :func:`generate` / :class:`EnsembleStore`: many members per condition with stable per-member
  seeds, streamed to a resumable zarr store;
- :class:`EnsembleEmulator`: p(member | K seed members, lead time), in emulation or
  post-processing mode (``docs/emulation.md``), with :func:`calibrate_spread` for the spread knob
  and :func:`ensemble_skill` for the SEEDS skill table.
"""

from sciffusion.emulators.members import generate
from sciffusion.emulators.store import EnsembleStore
from sciffusion.emulators.ensemble import EnsembleEmulator, TemperedStep
from sciffusion.emulators.calibrate import Calibration, calibrate_spread
from sciffusion.emulators.skill import ensemble_skill, format_table

__all__ = ["Calibration", "EnsembleEmulator", "EnsembleStore", "TemperedStep", "calibrate_spread", "ensemble_skill",
           "format_table", "generate"]
