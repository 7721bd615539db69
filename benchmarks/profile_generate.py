"""Where a large ``EnsembleEmulator.generate`` call spends its time, on CPU: the Kolmogorov 64 x 64 row
of the cost table (benchmarks/gpu_cost.py) at a batch that would fill a GPU.

The networks have the cost table's architectures (EOFMLP 384 x 3, the 2-call student) trained for a few
steps on a small reference ensemble (a call costs the same whatever the weights, as in gpu_cost.py);
the student generates 31 members for the 4 leads of ``--inits`` initial times in one call. After a
warm-up and ``--repeats`` timed calls, one call runs under cProfile and its time is split into the
network (``torch.nn.functional.linear``), the EOF decoding, the coder's decoding (normalisation and
seed anomalies, on the CPU), the per-member seeding (``member_generators`` and the per-row ``randn``)
and the rest. Prints a table and writes ``results/profile_generate_kolmogorov_cpu.json``.

    OMP_NUM_THREADS=1 python benchmarks/profile_generate.py            # ~1 min
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cost_kolmogorov as ck  # noqa: E402
import gpu_cost  # noqa: E402
from _run_meta import run_meta  # noqa: E402

from sciffusion.emulators import EnsembleEmulator  # noqa: E402
from sciffusion.systems import KolmogorovFlow, simulate  # noqa: E402

OUT = Path(__file__).parent / "results" / "profile_generate_kolmogorov_cpu.json"
# (label, file suffix, function name) of the profiled functions whose cumulative time is reported
PARTS = [("network calls (linear layers)", "", "<built-in method torch._C._nn.linear>"),
         ("EOF decoding (latent -> field)", "sciffusion/nets/eof.py", "decode"),
         ("coder decoding (CPU)", "sciffusion/emulators/seeds_data.py", "decode"),
         ("per-member generators", "sciffusion/diffusion/streams.py", "member_generators"),
         ("per-member generators", "sciffusion/diffusion/streams.py", "stream_generators"),
         ("per-row noise draws", "sciffusion/diffusion/sample.py", "randn")]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Cumulative seconds of the profiled function ``name`` in a file ending with ``suffix``."""
    total = 0.0
    for (file, _, func), (_, _, _, ct, _) in stats.stats.items():
        if func == name and file.endswith(suffix):
            total += ct
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inits", type=int, default=64, help="initial times generated in one call (31 members each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rng", choices=("torch", "philox"), default="torch", help="generate's member streams")
    p.add_argument("--out", type=Path, default=None, help=f"default {OUT.name} (with --rng philox: *_philox.json)")
    args = p.parse_args(argv)
    args.out = args.out or (OUT if args.rng == "torch" else OUT.with_name(f"{OUT.stem}_philox.json"))
    t_start, s = time.perf_counter(), ck.SETUP
    truth, ref = KolmogorovFlow(n=64, **s["truth"]), KolmogorovFlow(n=64, **s["forecast"])
    data = simulate(truth, forecast_system=ref, n_members=6, n_init=4, n_leads=s["n_leads"],
                    lead_interval=s["lead_interval"], init_interval=1.0, perturbation=s["perturbation"],
                    spinup=2.0, seed=101, progress=False).drop_vars("chunk_done", errors="ignore").load()
    train = ck.leads(data)[["vorticity"]]
    teacher = EnsembleEmulator.fit(train, mode="emulation", steps=20, pairs_per_sample=16, progress=False,
                                   net={"name": "EOFMLP", "kwargs": {"width": 384, "depth": 3}})
    run = types.SimpleNamespace(args=types.SimpleNamespace(distill_steps=10, trajectories=256, smoke=False),
                                device=torch.device("cpu"))
    student = gpu_cost.student_of(run, "kolmogorov", teacher, train)
    seeds = train.isel(member=[0, 1])
    many = seeds.isel(init_time=np.arange(args.inits) % seeds.sizes["init_time"]).assign_coords(
        init_time=np.arange(args.inits))
    members = 31 * args.inits

    def call():
        student.generate(many, 31, batch_size=4096, progress=False, rng=args.rng)

    call()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    call()
    profiled = time.perf_counter() - t0
    prof.disable()
    stats = pstats.Stats(prof)
    parts = {}
    for label, suffix, name in PARTS:  # member_generators calls stream_generators: never both in one call
        parts[label] = parts.get(label, 0.0) + cumulative(stats, suffix, name)
    parts["rest"] = profiled - sum(parts.values())
    record = {"meta": run_meta(), "rng": args.rng, "inits": args.inits, "members_per_call": members, "leads": s["n_leads"],
              "best_call_s": min(times), "ms_per_member_forecast": min(times) / members * 1e3,
              "profiled_call_s": profiled,
              "parts_ms_per_member_forecast": {k: v / members * 1e3 for k, v in parts.items()},
              "note": "networks of the cost table's architectures trained for a few steps; cProfile adds overhead "
                      "to the profiled call, so parts are read as shares of it"}
    print(f"student (2 calls), {args.inits} initial times x 31 members x {s['n_leads']} leads in one call on CPU: "
          f"{record['ms_per_member_forecast']:.3f} ms per member forecast (best of {args.repeats})")
    print(f"{'part of the profiled call':34s} {'ms / member':>11s} {'share':>6s}")
    for k, v in parts.items():
        print(f"{k:34s} {v / members * 1e3:11.4f} {v / profiled:6.0%}")
    record["meta"]["wall_s"] = time.perf_counter() - t_start
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
