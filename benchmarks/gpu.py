"""GPU throughput: training and sampling of the 64x64 and 256x256 U-Nets, fp32 vs bf16 vs
channels-last vs torch.compile, achieved TFLOP/s against the card's bf16 peak, peak memory, and
the cost of a generated Kolmogorov member against a simulated one on the same GPU.

    python benchmarks/gpu.py                    # one CUDA GPU, < 5 min; writes results/gpu.json
    python benchmarks/gpu.py --no-compile       # skip the torch.compile variants (~1 min)
    python benchmarks/gpu.py --smoke            # tiny sizes on CPU: checks the script, no numbers

What is measured (all timings after warm-up, synchronised, best of ``--repeats``):

* training: one optimiser step as :meth:`sciffusion.training.Trainer.train_step` does it (EDM
  loss, backward, clipping, AdamW, EMA) on a random batch; samples/s and achieved TFLOP/s, where
  the FLOPs of one step (forward + backward; convolutions, matmuls, attention) are counted once
  with :class:`torch.utils.flop_counter.FlopCounterMode`. Peak = the card's dense bf16 spec
  (table below, by device name) and the measured peak of a large bf16 matmul on this card.
* sampling: members/s of an 18-step Heun ensemble (35 denoiser calls per member).
* variants: ``fp32`` (TF32 allowed), ``bf16`` autocast, ``bf16_cl`` (bf16 + channels-last),
  ``bf16_compile`` (bf16 + ``torch.compile`` of the backbone, channels-last if it helped). The
  eager variants of both models run first, then the compiled ones (256x256 first); a compiled
  variant is skipped, and listed under ``skipped``, when fewer than 100 s of ``--budget`` remain.
* Kolmogorov: seconds per member to advance the 64x64 flow by one lead interval (0.5 time units,
  50 ETDRK4 steps, float64 as in ``sciffusion simulate``; float32 too) against seconds per member
  for the emulator to generate that lead (the 64x64 U-Net, best variant).

Targets (issue 8): >= 40% of peak bf16 throughput in the 256x256 training step, and a generated
member >= 10x cheaper than a simulated one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sciffusion.diffusion import Denoiser, edm_loss, sample  # noqa: E402
from sciffusion.nets import UNet2d  # noqa: E402

# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets
SPEC_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.0}

MODELS = {
    # the Kolmogorov emulator: vorticity given the previous vorticity
    "unet64": dict(size=64, batch=64, sample_batch=256,
                   net=dict(in_channels=1, cond_channels=1, channels=[64, 128, 256], blocks_per_level=2,
                            attention_levels=[-1], padding="circular", groups=32)),
    # a downscaling-size model: 2 fields on a 256x256 grid given 2 coarse fields
    "unet256": dict(size=256, batch=16, sample_batch=32,
                    net=dict(in_channels=2, cond_channels=2, channels=[128, 256, 256, 512], blocks_per_level=2,
                             attention_levels=[-1], padding="circular", groups=32)),
}
SMOKE = {
    "unet64": dict(size=16, batch=4, sample_batch=4,
                   net=dict(in_channels=1, cond_channels=1, channels=[8, 16], blocks_per_level=1,
                            attention_levels=[-1], padding="circular", groups=4)),
    "unet256": dict(size=32, batch=2, sample_batch=2,
                    net=dict(in_channels=2, cond_channels=2, channels=[8, 16], blocks_per_level=1,
                             attention_levels=[-1], padding="circular", groups=4)),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeats: int, inner: int) -> float:
    """Best over ``repeats`` of the mean seconds of ``inner`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return min(times)


def matmul_peak(device, dtype=torch.bfloat16, n: int = 8192) -> float:
    """Measured TFLOP/s of an ``n x n x n`` matmul (the practical ceiling on this card)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    t = best_time(lambda: a @ b, device, repeats=3, inner=10)
    return 2 * n**3 / t / 1e12


def spec_peak(name: str) -> float | None:
    for key, value in SPEC_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


class Variant:
    """How to run a model: autocast dtype, memory format, compile."""

    def __init__(self, name: str, bf16: bool, channels_last: bool, compile: bool):
        self.name, self.bf16, self.channels_last, self.compile = name, bf16, channels_last, compile

    def autocast(self, device):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def build(self, spec, device) -> Denoiser:
        torch.manual_seed(0)
        den = Denoiser(UNet2d(**spec["net"]), sigma_data=1.0).to(device)
        if self.channels_last:
            den = den.to(memory_format=torch.channels_last)
        if self.compile:  # static shapes: each model is compiled for its own sizes
            torch._dynamo.reset()
            den.net = torch.compile(den.net, dynamic=False)
        return den

    def fmt(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def train_step_fn(den, variant, spec, device):
    """One Trainer-like step (EDM loss, backward, clip, AdamW, EMA) on a fixed random batch."""
    s, c, cc, b = spec["size"], spec["net"]["in_channels"], spec["net"]["cond_channels"], spec["batch"]
    x = variant.fmt(torch.randn(b, c, s, s, device=device))
    cond = variant.fmt(torch.randn(b, cc, s, s, device=device))
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)
    ema = [p.detach().clone() for p in den.parameters()]
    g = torch.Generator(device=device).manual_seed(0)

    def step():
        with variant.autocast(device):
            loss = edm_loss(den, x, cond=cond, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in den.parameters()], 1e-3)
    return step


def step_flops(spec, device) -> float:
    """FLOPs of one forward + backward of the EDM loss (fp32 eager; counts conv/matmul/attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    den = Variant("fp32", False, False, False).build(spec, device)
    s, c, cc, b = spec["size"], spec["net"]["in_channels"], spec["net"]["cond_channels"], spec["batch"]
    x, cond = torch.randn(b, c, s, s, device=device), torch.randn(b, cc, s, s, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        edm_loss(den, x, cond=cond).backward()
    return float(counter.get_total_flops())


def sample_fn(den, variant, spec, device, steps: int):
    s, c, cc, b = spec["size"], spec["net"]["in_channels"], spec["net"]["cond_channels"], spec["sample_batch"]
    cond = variant.fmt(torch.randn(b, cc, s, s, device=device))

    def denoise(x, sigma, **kw):
        with variant.autocast(device):
            return den(variant.fmt(x), sigma, **kw).float()

    def run():
        with torch.no_grad():
            return sample(denoise, (b, c, s, s), steps=steps, method="heun", cond=cond, device=device,
                          generator=torch.Generator(device=device).manual_seed(0))
    return run


def bench_model(name, spec, variants, device, args, peaks) -> dict:
    out = {"spec": spec, "flops_per_train_step": step_flops(spec, device), "variants": {}}
    for v in variants:
        t_start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        den = v.build(spec, device)
        step = train_step_fn(den, v, spec, device)
        for _ in range(args.warmup):
            step()
        t_train = best_time(step, device, args.repeats, args.inner)
        mem_train = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        den.eval()
        run = sample_fn(den, v, spec, device, args.sample_steps)
        run()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_sample = best_time(run, device, min(args.repeats, 2), 1)
        mem_sample = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        tflops = out["flops_per_train_step"] / t_train / 1e12
        rec = {
            "train_step_s": t_train, "train_samples_per_s": spec["batch"] / t_train, "train_tflops": tflops,
            "train_fraction_of_spec_peak": tflops / peaks["spec"] if peaks["spec"] else None,
            "train_fraction_of_measured_peak": tflops / peaks["measured"] if peaks["measured"] else None,
            "sample_members_per_s": spec["sample_batch"] / t_sample, "sample_s_per_member": t_sample / spec["sample_batch"],
            "peak_memory_train_gib": mem_train, "peak_memory_sample_gib": mem_sample,
            "wall_s_including_compile": time.perf_counter() - t_start,
        }
        out["variants"][v.name] = rec
        print(f"{name:8s} {v.name:13s} train {rec['train_samples_per_s']:8.1f} samples/s {tflops:7.1f} TFLOP/s"
              f" | sample {rec['sample_members_per_s']:8.1f} members/s"
              + (f" | mem {mem_train:.1f}/{mem_sample:.1f} GiB" if mem_train is not None else ""), flush=True)
        del den, step, run
    return out


def kolmogorov(device, emulator_s_per_member: float, smoke: bool) -> dict:
    """Seconds per member for one 0.5-time-unit lead: ETDRK4 solver vs the emulator."""
    from sciffusion.systems import KolmogorovFlow

    members, n_steps = (8, 5) if smoke else (256, 50)
    out = {"members": members, "solver_steps_per_lead": n_steps, "emulator_s_per_member": emulator_s_per_member}
    for dtype in (torch.float64, torch.float32):
        kf = KolmogorovFlow(n=64, device=device, dtype=dtype)
        w = kf.initial_state(members, torch.Generator().manual_seed(0)).to(device)
        kf.step(w, 2)
        t = best_time(lambda: kf.step(w, n_steps), device, repeats=2, inner=1)
        key = str(dtype).split(".")[-1]
        out[f"solver_s_per_member_{key}"] = t / members
        out[f"solver_over_emulator_{key}"] = t / members / emulator_s_per_member
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, runs on CPU: checks the script only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inner", type=int, default=10, help="training steps per timing")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sample-steps", type=int, default=18)
    ap.add_argument("--budget", type=float, default=300, help="seconds; compile variants are skipped when "
                    "fewer than 100 s are left before them")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = ap.parse_args()
    t_all = time.perf_counter()
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (use --smoke to check the script on CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = SMOKE if args.smoke else MODELS
    if args.smoke:
        args.repeats, args.inner, args.warmup, args.sample_steps = 1, 1, 1, 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    peaks = {"spec": spec_peak(name), "measured": matmul_peak(device, n=256 if args.smoke else 8192)}
    print(f"{name}: bf16 peak spec {peaks['spec']} TFLOP/s, measured matmul {peaks['measured']:.1f} TFLOP/s")
    variants = [Variant("fp32", False, False, False), Variant("bf16", True, False, False),
                Variant("bf16_cl", True, True, False)]
    results = {"device": name, "torch": torch.__version__, "peak_bf16_tflops": peaks, "models": {}}
    # eager variants of both models first; then compile, the 256x256 model first (the 40% target)
    plan = [(m, v) for m in models for v in variants]
    if not args.no_compile and not args.smoke:
        plan += [(m, Variant("bf16_compile", True, None, True)) for m in reversed(list(models))]
    for mname, v in plan:
        if v.compile and time.perf_counter() - t_all > args.budget - 100:
            print(f"{mname}: skipping {v.name} to stay within --budget {args.budget:.0f} s", flush=True)
            results.setdefault("skipped", []).append(f"{mname}/{v.name}")
            continue
        res = results["models"].get(mname)
        if v.channels_last is None:  # compile on the better memory format of the eager runs
            eager = res["variants"]
            v.channels_last = eager["bf16_cl"]["train_step_s"] < eager["bf16"]["train_step_s"]
        try:
            part = bench_model(mname, models[mname], [v], device, args, peaks)
        except Exception as exc:  # a compiler failure must not lose the other numbers
            if not v.compile:
                raise
            print(f"{mname}: {v.name} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            results.setdefault("failed", {})[f"{mname}/{v.name}"] = f"{type(exc).__name__}: {str(exc)[:1000]}"
            continue
        results["models"][mname] = part if res is None else {**res, "variants": {**res["variants"], **part["variants"]}}
    best64 = min(results["models"]["unet64"]["variants"].values(), key=lambda r: r["sample_s_per_member"])
    results["kolmogorov"] = kolmogorov(device, best64["sample_s_per_member"], args.smoke)
    big = results["models"]["unet256"]["variants"]
    best_frac = max((r["train_fraction_of_spec_peak"] or r["train_fraction_of_measured_peak"] or 0) for r in big.values())
    results["targets"] = {
        "unet256_train_fraction_of_bf16_peak": best_frac, "meets_40_percent": best_frac >= 0.4,
        "solver_over_emulator": results["kolmogorov"]["solver_over_emulator_float64"],
        "meets_10x": results["kolmogorov"]["solver_over_emulator_float64"] >= 10,
    }
    results["wall_s"] = time.perf_counter() - t_all
    results["smoke"] = args.smoke
    print(json.dumps(results["targets"], indent=1))
    print(f"total {results['wall_s']:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
