"""A resumable ``distill`` call that keeps its own cost: shared by the distillation benchmarks."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sciffusion.distill import distill


def timed_distill(run: Path, **kwargs):
    """``distill(out_dir=run, ...)``, its wall and CPU seconds (summed over interrupted calls, kept in
    ``run/distill_s.json``, so a reused student reports its training) and whether it was reused."""
    path = run / "distill_s.json"
    record = json.loads(path.read_text()) if path.exists() else {"wall_s": 0.0, "cpu_s": 0.0, "finished": False}
    reused = record["finished"]
    t0, c0 = time.time(), time.process_time()
    try:
        student = distill(out_dir=run, **kwargs)
        record["finished"] = True
    finally:
        if not reused:
            run.mkdir(parents=True, exist_ok=True)
            record["wall_s"] += time.time() - t0
            record["cpu_s"] += time.process_time() - c0
            path.write_text(json.dumps(record))
    return student, record, reused
