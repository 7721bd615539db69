"""GPU throughput: training and sampling of the 64x64 and 256x256 U-Nets, fp32 vs bf16 vs
channels-last vs torch.compile, achieved TFLOP/s against the card's bf16 peak, peak memory, and
the cost of a generated Kolmogorov member against a simulated one on the same GPU.

    python benchmarks/gpu.py                    # one CUDA GPU, < 5 min; writes results/gpu.json
    python benchmarks/gpu.py --no-compile       # skip the torch.compile variants
    python benchmarks/gpu.py --plan unet256/bf16 unet256/bf16_compile --profile unet256
    python benchmarks/gpu.py --smoke            # tiny sizes on CPU: checks the script, no numbers
    python benchmarks/gpu.py --no-sample --profile-compiled --plan unet256/bf16_compile unet256/bf16_compile_clgn

Compiled variants take suffixes after ``bf16_compile``: ``_b32`` (training batch 32), ``_fused``
(``AdamW(fused=True)``), ``_whole`` (the whole Denoiser compiled, not only its backbone) and
``_clgn`` (the U-Net's GroupNorm through the NHWC view, :func:`group_norm_nhwc`) and ``_clgrad`` (the
gradient into every GroupNorm made channels-last, ``sciffusion.nets.unet.channels_last_grad``, so that the
convolution backward gets its ``grad_output`` in its own layout) and ``_clgradconv`` (the same for the gradient of
every 3x3 convolution's output) and ``_forcelayout`` (inductor's ``force_layout_optimization``: channels-last
layouts chosen in every compiled graph, the backward one included - the hypothesis for the copies left after
``_clgrad_clgradconv``), in any combination.

What is measured (all timings after warm-up, synchronised, best of ``--repeats``):

* training: one optimiser step as :meth:`sciffusion.training.Trainer.train_step` does it (EDM
  loss, backward, clipping, AdamW, EMA) on a random batch; samples/s and achieved TFLOP/s, where
  the FLOPs of one step (forward + backward; convolutions, matmuls, attention) are counted once
  with :class:`torch.utils.flop_counter.FlopCounterMode`. Peak = the measured TFLOP/s of an
  8192^3 bf16 matmul on this card (the target's "peak bf16 matmul throughput"), and the card's
  dense bf16 data-sheet figure (table below, by device name) for reference.
* sampling: members/s of a 12-step Heun ensemble (23 denoiser calls per member, the
  EnsembleEmulator default).
* variants: ``fp32`` (TF32 allowed), ``bf16`` autocast, ``bf16_cl`` (bf16 + channels-last),
  ``bf16_compile`` (bf16 + channels-last + ``torch.compile`` of the backbone). Every eager
  variant and the Kolmogorov cost run first, then the compiled variants (256x256 first), then the
  ADM-width 256x256 model; an entry is skipped, and listed under ``skipped``, when too little of
  ``--budget`` is left for it (``--compile-reserve`` for a compiled one). ``--profile MODEL``
  first writes the GPU time of one bf16 step by operator next to ``--out``. The JSON is rewritten
  after every entry, so a run cut short keeps what it measured.
* Kolmogorov: seconds per member to advance the flow by one lead (0.5 time units) with the
  ETDRK4 solver - on the emulator's 64x64 grid (50 steps) and 4x finer (256x256, 200 steps),
  float64 and float32 - against seconds per member for the 64x64 U-Net to generate that lead
  (best eager variant).

Targets (issue 8): >= 40% of peak bf16 matmul throughput in the 256x256 training step, and a
generated member >= 10x cheaper than a simulated one. Measured on an H100 80GB HBM3: see
docs/scale.md.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run_meta import run_meta  # noqa: E402

from sciffusion.diffusion import Denoiser, edm_loss, sample  # noqa: E402
from sciffusion.nets import UNet2d  # noqa: E402

# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets
SPEC_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
                    "RTX 4090": 165.0}

MODELS = {
    # the Kolmogorov emulator: vorticity given the previous vorticity (doubly periodic)
    "unet64": dict(size=64, batch=64, sample_batch=256,
                   net=dict(in_channels=1, cond_channels=1, channels=[64, 128, 256], blocks_per_level=2,
                            attention_levels=[-1], padding="circular", groups=32)),
    # a CorrDiff-size downscaling model: 2 fields on a 256x256 limited-area grid given 2 coarse fields
    "unet256": dict(size=256, batch=16, sample_batch=32,
                    net=dict(in_channels=2, cond_channels=2, channels=[128, 256, 256, 512], blocks_per_level=2,
                             attention_levels=[-1], padding="zeros", groups=32)),
    # the same at the ADM (Dhariwal & Nichol 2021) 256x256 width: 256 channels at full resolution
    "unet256_wide": dict(size=256, batch=16, sample_batch=32,
                         net=dict(in_channels=2, cond_channels=2, channels=[256, 256, 512, 512], blocks_per_level=2,
                                  attention_levels=[-1], padding="zeros", groups=32)),
}
SMOKE = {
    "unet64": dict(size=16, batch=4, sample_batch=4,
                   net=dict(in_channels=1, cond_channels=1, channels=[8, 16], blocks_per_level=1,
                            attention_levels=[-1], padding="circular", groups=4)),
    "unet256": dict(size=32, batch=2, sample_batch=2,
                    net=dict(in_channels=2, cond_channels=2, channels=[8, 16], blocks_per_level=1,
                             attention_levels=[-1], padding="zeros", groups=4)),
    "unet256_wide": dict(size=32, batch=2, sample_batch=2,
                         net=dict(in_channels=2, cond_channels=2, channels=[16, 16], blocks_per_level=1,
                                  attention_levels=[-1], padding="zeros", groups=4)),
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

    def __init__(self, name: str, bf16: bool, channels_last: bool, compile: bool, *, batch: int | None = None,
                 fused: bool = False, whole: bool = False, clgn: bool = False, clgrad: bool = False,
                 clgradconv: bool = False, forcelayout: bool = False):
        self.name, self.bf16, self.channels_last, self.compile = name, bf16, channels_last, compile
        # batch: override the model's training batch; fused: AdamW(fused=True) (one kernel per step, not a
        # foreach pass per moment); whole: compile the Denoiser (preconditioning and loss weighting included)
        # rather than its backbone alone; clgn: the U-Net's GroupNorm through the NHWC view; clgrad: gradients
        # into the GroupNorms made channels-last (GroupNorm.channels_last_grad)
        self.batch, self.fused, self.whole, self.clgn, self.clgrad = batch, fused, whole, clgn, clgrad
        self.clgradconv = clgradconv  # the gradient of every 3x3 convolution's output made channels-last
        self.forcelayout = forcelayout  # torch._inductor.config.force_layout_optimization while it compiles and runs

    @classmethod
    def parse(cls, name: str) -> "Variant":
        """``bf16_compile`` with optional suffixes ``_b32`` (batch 32), ``_fused``, ``_whole``, ``_clgn``, ``_clgrad``."""
        base, *extra = name.split("_compile")
        if base != "bf16" or len(extra) != 1:
            raise ValueError(f"unknown compiled variant {name!r}")
        tags = [t for t in extra[0].split("_") if t]
        batch = next((int(t[1:]) for t in tags if t.startswith("b") and t[1:].isdigit()), None)
        flags = ("fused", "whole", "clgn", "clgrad", "clgradconv", "forcelayout")
        unknown = [t for t in tags if t not in flags and not (t.startswith("b") and t[1:].isdigit())]
        if unknown:
            raise ValueError(f"unknown variant suffixes {unknown} in {name!r}")
        return cls(name, True, True, True, batch=batch, fused="fused" in tags, whole="whole" in tags,
                   clgn="clgn" in tags, clgrad="clgrad" in tags, clgradconv="clgradconv" in tags,
                   forcelayout="forcelayout" in tags)

    def norm_context(self):
        """``_clgn``: the U-Net's GroupNorm as :func:`group_norm_nhwc`; ``_clgrad`` / ``_clgradconv``: channels-last
        gradients into every GroupNorm / out of every 3x3 convolution (off without the suffix, whatever the
        package's default); all only while this variant runs."""
        stack = contextlib.ExitStack()
        if self.clgn:
            stack.enter_context(_patched_group_norm())
        # set both ways: a variant without the suffix runs without the barrier, whatever the package default
        stack.enter_context(_channels_last_grad("GroupNorm", self.clgrad))
        stack.enter_context(_channels_last_grad("PadConv2d", self.clgradconv))
        if self.forcelayout:
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(force_layout_optimization=True))
        return stack

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
            if self.whole:
                return torch.compile(den, dynamic=False)
            den.net = torch.compile(den.net, dynamic=False)
        return den

    def fmt(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def group_norm_nhwc(x, groups: int, weight, bias, eps: float):
    """GroupNorm of a channels-last ``(B, C, H, W)`` tensor through its NHWC view.

    ``aten.native_group_norm`` (and inductor's decomposition of it) reshapes to ``(B, G, C/G*H*W)``,
    which is no view of a channels-last tensor; here the statistics are reduced over the
    ``(B, H*W, G, C/G)`` view, contiguous in memory, with float32 accumulation, and the result
    keeps the channels-last strides. Equal to ``F.group_norm`` (checked by ``--smoke``).
    """
    b, c, h, w = x.shape
    xs = x.permute(0, 2, 3, 1).reshape(b, h * w, groups, c // groups)
    var, mean = torch.var_mean(xs.float(), dim=(1, 3), keepdim=True, correction=0)
    y = ((xs.float() - mean) * torch.rsqrt(var + eps)).reshape(b, h, w, c)
    if weight is not None:
        y = y * weight.float() + bias.float()
    return y.to(x.dtype).permute(0, 3, 1, 2)


def check_group_norm_nhwc(device) -> None:
    """group_norm_nhwc against F.group_norm (float32 and bf16, channels-last input); raises if they differ."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(2, 16, 8, 6, generator=g) * 3 + 1).to(device).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, generator=g).to(device), torch.randn(16, generator=g).to(device)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        got = group_norm_nhwc(x.to(dtype), 4, w.to(dtype), b.to(dtype), 1e-6)
        want = torch.nn.functional.group_norm(x.float(), 4, w, b, 1e-6)
        err = (got.float() - want).abs().max().item()
        if err > tol or got.dtype != dtype or not got.is_contiguous(memory_format=torch.channels_last):
            raise AssertionError(f"group_norm_nhwc differs from F.group_norm ({dtype}): max error {err}")


@contextlib.contextmanager
def _channels_last_grad(module: str, value: bool):
    from sciffusion.nets import unet

    cls = getattr(unet, module)
    before = cls.channels_last_grad
    cls.channels_last_grad = value
    try:
        yield
    finally:
        cls.channels_last_grad = before


@contextlib.contextmanager
def _patched_group_norm():
    from sciffusion.nets import unet

    original = unet.GroupNorm.forward

    def forward(self, x):
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            with torch.autocast(x.device.type, enabled=False):  # statistics in float32, output in x's dtype
                return group_norm_nhwc(x, self.num_groups, self.weight, self.bias, self.eps)
        return original(self, x)

    unet.GroupNorm.forward = forward
    try:
        yield
    finally:
        unet.GroupNorm.forward = original


def train_step_fn(den, variant, spec, device):
    """One Trainer-like step (EDM loss, backward, clip, AdamW, EMA) on a fixed random batch."""
    s, c, cc, b = spec["size"], spec["net"]["in_channels"], spec["net"]["cond_channels"], spec["batch"]
    x = variant.fmt(torch.randn(b, c, s, s, device=device))
    cond = variant.fmt(torch.randn(b, cc, s, s, device=device))
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4, **({"fused": True} if variant.fused else {}))
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


def bench_variant(name, spec, v, device, args, peaks, flops) -> dict:
    """Train-step and sampling timings of one model under one variant.

    ``flops`` are those of one step at ``spec["batch"]``; a variant with its own batch scales them
    (convolutions and matmuls are linear in the batch). ``args.no_sample`` skips the sampling timing;
    ``args.profile_compiled`` writes the GPU time by kernel of one step of a compiled variant.
    """
    t_start = time.perf_counter()
    if v.batch:
        flops = flops * v.batch / spec["batch"]
        spec = {**spec, "batch": v.batch}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with v.norm_context():
        return _bench_variant(name, spec, v, device, args, peaks, flops, t_start)


def _bench_variant(name, spec, v, device, args, peaks, flops, t_start) -> dict:
    den = v.build(spec, device)
    step = train_step_fn(den, v, spec, device)
    for _ in range(args.warmup):
        step()
    t_train = best_time(step, device, args.repeats, args.inner)
    mem_train = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    tflops = flops / t_train / 1e12
    rec = {
        "batch": spec["batch"], "fused_adamw": v.fused, "compiled_whole_denoiser": v.whole,
        "nhwc_group_norm": v.clgn, "channels_last_grad": v.clgrad, "channels_last_grad_conv": v.clgradconv,
        "force_layout_optimization": v.forcelayout,
        "train_step_s": t_train, "train_samples_per_s": spec["batch"] / t_train, "train_tflops": tflops,
        "train_fraction_of_measured_peak": tflops / peaks["measured"],
        "train_fraction_of_spec_peak": tflops / peaks["spec"] if peaks["spec"] else None,
        "peak_memory_train_gib": mem_train,
    }
    if v.compile and args.profile_compiled:
        rec["profile_ms"] = profile_fn(step, device, Path(args.out).with_name(f"{Path(args.out).stem}_profile_{v.name}.txt"))
    sample_msg = ""
    if not args.no_sample:
        den.eval()
        run = sample_fn(den, v, spec, device, args.sample_steps)
        run()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_sample = best_time(run, device, min(args.repeats, 2), 1)
        mem_sample = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        rec.update({"sample_steps": args.sample_steps, "sample_denoiser_calls": 2 * args.sample_steps - 1,
                    "sample_members_per_s": spec["sample_batch"] / t_sample,
                    "sample_s_per_member": t_sample / spec["sample_batch"], "peak_memory_sample_gib": mem_sample})
        sample_msg = f" | sample {rec['sample_members_per_s']:8.1f} members/s"
        del run
    rec["wall_s_including_compile"] = time.perf_counter() - t_start
    spec_frac = f" ({rec['train_fraction_of_spec_peak']:.0%} of spec)" if peaks["spec"] else ""
    print(f"{name:12s} {v.name:13s} train {rec['train_samples_per_s']:8.1f} samples/s {tflops:6.1f} TFLOP/s = "
          f"{rec['train_fraction_of_measured_peak']:.0%} of measured peak{spec_frac}" + sample_msg
          + (f" | mem {mem_train:.1f} GiB" if mem_train is not None else "")
          + f" | {rec['wall_s_including_compile']:.0f} s", flush=True)
    del den, step
    return rec


def profile_step(spec, device, path: Path) -> dict:
    """GPU time of one bf16 eager training step, grouped by operator (where the step's time goes)."""
    v = Variant("bf16", True, False, False)
    step = train_step_fn(v.build(spec, device), v, spec, device)
    for _ in range(3):
        step()
    return profile_fn(step, device, path)


def profile_fn(step, device, path: Path) -> dict:
    """GPU time of one call of ``step`` (warmed up), by operator or kernel, top 40 in ms; table to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    table = prof.key_averages().table(sort_by=key, row_limit=40)
    path.write_text(table)
    print(table[:3000], flush=True)
    return {e.key: getattr(e, key, 0) / 1e3 for e in events[:40]}  # ms


def kolmogorov(device, emulator: dict, smoke: bool) -> dict:
    """Seconds per member for one 0.5-time-unit lead: the ETDRK4 solver against the emulator.

    The solver runs on the emulator's 64x64 grid (50 steps of dt = 0.01, the package default), and
    4x finer (256x256, dt = 0.0025, 200 steps: the resolution at which a 64x64 training set would
    be simulated and block-averaged to be converged at its own grid scale), float64 and float32.
    """
    from sciffusion.systems import KolmogorovFlow

    members = 8 if smoke else 256
    out = {"members": members, "lead_time_units": 0.5, "emulator": emulator}
    grids = ((16, 0.1), (32, 0.05)) if smoke else ((64, 0.01), (256, 0.0025))
    for n, dt in grids:
        n_steps = int(round(0.5 / dt))
        for dtype in (torch.float64, torch.float32):
            kf = KolmogorovFlow(n=n, dt=dt, device=device, dtype=dtype)
            w = kf.initial_state(members, torch.Generator().manual_seed(0)).to(device)
            kf.step(w, 2)
            t = best_time(lambda kf=kf, w=w, k=n_steps: kf.step(w, k), device, repeats=2, inner=1)
            key = f"n{n}_{str(dtype).split('.')[-1]}"
            out[f"solver_s_per_member_{key}"] = t / members
            out[f"solver_steps_{key}"] = n_steps
            out[f"solver_over_emulator_{key}"] = t / members / emulator["sample_s_per_member"]
            print(f"kolmogorov solver {key}: {t / members * 1e3:.4f} ms/member ({n_steps} steps) = "
                  f"{out[f'solver_over_emulator_{key}']:.2f}x the emulator's "
                  f"{emulator['sample_s_per_member'] * 1e3:.4f} ms/member", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, runs on CPU: checks the script only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inner", type=int, default=10, help="training steps per timing")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--sample-steps", type=int, default=12, help="Heun steps (the EnsembleEmulator default, 12)")
    ap.add_argument("--budget", type=float, default=290, help="seconds; a torch.compile variant is skipped when "
                    "fewer than --compile-reserve seconds are left before it, an eager one under 20 s")
    ap.add_argument("--compile-reserve", type=float, default=90)
    ap.add_argument("--plan", nargs="*", help="run only these MODEL/VARIANT entries (and 'kolmogorov'), in order")
    ap.add_argument("--profile", metavar="MODEL", help="first profile one bf16 training step of MODEL: the "
                    "GPU time by kernel, written next to --out")
    ap.add_argument("--no-sample", action="store_true", help="time the training step only")
    ap.add_argument("--profile-compiled", action="store_true",
                    help="also write the GPU time by kernel of one step of each compiled variant")
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
    check_group_norm_nhwc(device)
    peaks = {"spec": spec_peak(name), "measured": matmul_peak(device, n=256 if args.smoke else 8192)}
    print(f"{name}, torch {torch.__version__}: bf16 peak spec {peaks['spec']} TFLOP/s, "
          f"measured 8192^3 matmul {peaks['measured']:.1f} TFLOP/s", flush=True)
    results = {"meta": run_meta(), "device": name, "torch": torch.__version__, "peak_bf16_tflops": peaks, "models": {},
               "skipped": [], "failed": {}, "smoke": args.smoke}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        results["wall_s"] = time.perf_counter() - t_all
        out.write_text(json.dumps(results, indent=2))

    eager = {"fp32": (False, False), "bf16": (True, False), "bf16_cl": (True, True)}
    # every eager variant and the Kolmogorov cost first (seconds each), then the compiled variants
    # (a minute or more of compilation each; 256x256 first, the 40% target), then the wide model
    plan = [("unet256", "bf16_cl"), ("unet256", "fp32"), ("unet256", "bf16"),
            ("unet64", "fp32"), ("unet64", "bf16"), ("unet64", "bf16_cl"), ("kolmogorov", None),
            ("unet256", "bf16_compile"), ("unet64", "bf16_compile"),
            ("unet256_wide", "bf16_cl"), ("unet256_wide", "bf16_compile")]
    if args.plan:  # e.g. --plan unet256/bf16 unet256/bf16_compile
        plan = [(p.split("/")[0], p.split("/")[1] if "/" in p else None) for p in args.plan]
    if args.profile:
        try:
            results["profile_ms"] = profile_step(models[args.profile], device, out.with_name(out.stem + "_profile.txt"))
        except Exception as exc:
            results["failed"]["profile"] = f"{type(exc).__name__}: {str(exc)[:1500]}"
            print(f"profile failed: {exc}", flush=True)
        save()
    flops = {}
    for mname, vname in plan:
        left = args.budget - (time.perf_counter() - t_all)
        compiled = vname is not None and "_compile" in vname
        if compiled and (args.no_compile or args.smoke):
            continue
        if left < (args.compile_reserve if compiled else 20):
            print(f"{mname}/{vname}: skipped, {left:.0f} s of --budget left", flush=True)
            results["skipped"].append(f"{mname}/{vname}")
            continue
        try:
            if mname == "kolmogorov":
                recs = results["models"]["unet64"]["variants"]
                best = min(recs, key=lambda k: recs[k]["sample_s_per_member"])
                emu = {"variant": best, **{k: recs[best][k] for k in
                                           ("sample_s_per_member", "sample_steps", "sample_denoiser_calls")}}
                results["kolmogorov"] = kolmogorov(device, emu, args.smoke)
            else:
                spec = models[mname]
                if mname not in flops:
                    flops[mname] = step_flops(spec, device)
                    results["models"][mname] = {"spec": spec, "flops_per_train_step": flops[mname], "variants": {}}
                recs = results["models"][mname]["variants"]
                if compiled:  # channels-last: what inductor's convolution layouts favour
                    v = Variant.parse(vname)
                else:
                    v = Variant(vname, *eager[vname], False)
                recs[vname] = bench_variant(mname, spec, v, device, args, peaks, flops[mname])
        except Exception as exc:  # a compiler failure or an OOM must not lose the other numbers
            msg = f"{type(exc).__name__}: {str(exc)[:1500]}"
            print(f"{mname}/{vname} failed: {msg[:400]}", flush=True)
            results["failed"][f"{mname}/{vname}"] = msg
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()

    targets = {}
    for mname in ("unet256", "unet256_wide"):
        recs = results["models"].get(mname, {}).get("variants", {})
        if recs:
            best = max(recs, key=lambda k: recs[k]["train_tflops"])
            targets[f"{mname}_best_train_variant"] = best
            targets[f"{mname}_train_fraction_of_measured_peak"] = recs[best]["train_fraction_of_measured_peak"]
            targets[f"{mname}_train_fraction_of_spec_peak"] = recs[best]["train_fraction_of_spec_peak"]
    if "unet256_train_fraction_of_measured_peak" in targets:
        targets["unet256_meets_40_percent_of_measured_peak"] = targets["unet256_train_fraction_of_measured_peak"] >= 0.4
    if "kolmogorov" in results:
        k = results["kolmogorov"]
        for key in [key for key in k if key.startswith("solver_over_emulator_")]:
            targets[key] = k[key]
        same = "solver_over_emulator_n16_float64" if args.smoke else "solver_over_emulator_n64_float64"
        targets["meets_10x_same_grid_float64"] = k.get(same, 0) >= 10
    results["targets"] = targets
    save()
    print(json.dumps(targets, indent=1))
    print(f"total {results['wall_s']:.0f} s; wrote {out}", flush=True)


if __name__ == "__main__":
    main()
