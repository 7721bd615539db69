"""Training and sampling throughput of a 64x64 U-Net on this machine's CPU (or a GPU if present).

Training: samples/s of full optimiser steps (EDM loss, backward, AdamW, EMA) at batch 16.
Sampling: members/s of an 18-step Heun run (35 NFE) at batch 16. Best of several repeats.
Writes benchmarks/results/bench_core.json.

    python benchmarks/bench_core.py [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sciffusion.diffusion import Denoiser, sample
from sciffusion.nets import UNet2d
from sciffusion.training import TensorPairs, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args()
    torch.manual_seed(0)
    net = UNet2d(1, cond_channels=1, channels=args.channels, blocks_per_level=1, padding="circular")
    den = Denoiser(net)
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(4 * args.batch, 1, 64, 64)
    trainer = Trainer(den, TensorPairs(x, torch.randn_like(x)), batch_size=args.batch, warmup_steps=1,
                      progress=False, device=args.device)
    trainer.fit(1)  # warm-up
    train_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        trainer.fit(trainer.step + args.train_steps)
        if args.device == "cuda":
            torch.cuda.synchronize()
        train_times.append(time.perf_counter() - t0)
    train_rate = args.train_steps * args.batch / min(train_times)
    cond = torch.randn(args.batch, 1, 64, 64, device=args.device)
    model = trainer.ema.eval()
    sample_times = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sample(model, (args.batch, 1, 64, 64), steps=18, cond=cond, device=args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            sample_times.append(time.perf_counter() - t0)
    sample_rate = args.batch / min(sample_times)
    result = {
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "unet_channels": args.channels, "parameters": params, "grid": [64, 64],
        "batch": args.batch, "train_samples_per_s": train_rate, "sample_members_per_s_18_heun": sample_rate,
        "train_times_s": train_times, "sample_times_s": sample_times,
    }
    print(f"U-Net {args.channels} ({params / 1e6:.2f} M parameters), 64x64, batch {args.batch}, {result['device']}, "
          f"{result['threads']} threads")
    print(f"{'training':28s} {train_rate:8.1f} samples/s  (best of {args.repeats} x {args.train_steps} steps)")
    print(f"{'sampling (18 Heun, 35 NFE)':28s} {sample_rate:8.2f} members/s (best of {args.repeats})")
    out = Path(__file__).parent / "results" / "bench_core.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
