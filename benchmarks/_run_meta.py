"""What every results JSON records about its run: commit, command line, machine (wall time is added by the caller)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def run_meta() -> dict:
    """``git_commit`` and ``git_dirty`` (uncommitted changes under sciffusion/ or benchmarks/), the
    command line, the platform, CPU count, load average and BLAS thread variables at the start."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "sciffusion", "benchmarks"],
                                    capture_output=True, text=True, cwd=root).stdout.strip())
    except OSError:
        commit, dirty = "unknown", None
    return {"git_commit": commit, "git_dirty": dirty, "command": " ".join([sys.executable, *sys.argv]),
            "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "blas_thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                               "MKL_NUM_THREADS")}}
