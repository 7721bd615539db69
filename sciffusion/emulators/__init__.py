"""Emulation tasks built on the diffusion core: ensemble generation (more tasks in later issues)."""

from sciffusion.emulators.members import generate
from sciffusion.emulators.store import EnsembleStore

__all__ = ["EnsembleStore", "generate"]
