"""Time per optimizer step of each alpha-Flow stage: the reference eager path against the fast path, side by side.

    .venv/bin/python benchmarks/step_cost.py [--threads 1,2] [--sizes tiny:32,S:8] [--steps 4] [--rounds 4]
    .venv/bin/python benchmarks/step_cost.py --device cuda [--sizes B:64] [--image 4x32x32 --patch 2]

Columns (CPU): `reference` = kernels: reference, fp32 (afsweep's eager step before the fast path: ATen GELU,
fused attention, torch.func.jvp with explicit-softmax attention, for-loop Adam, a host sync per logged value);
`fast fp32` = kernels: fast, fp32 (ATen GELU: the fused one, kernels: fused, is ~2% of a step; flat parameters,
fused Adam, the tangent pass at alpha = 0); `fast auto` = kernels: fast, precision: auto (bf16 where the CPU has
AMX, with the bf16 residual stream; else the same as fast fp32). Each ratio is against `reference` of the same
stage, size and thread count. Stages:
plain forward+backward (no objective), alpha = 1, alpha = 0.5 (one extra no-grad pass on the r < t rows), alpha = 0
(the MeanFlow JVP). ratio_fm 0.5, no CFG, Fashion-MNIST shape 1x28x28 patch 4. CPU seconds (process time) per step;
all variants run round-robin so that load from other processes hits them alike; each keeps its fastest round.
`--clock wall` times wall seconds instead (at 2 threads process time also counts OpenMP's spin-waits).

Also printed: the share of training time the grad_cos diagnostics (two extra gradient passes) cost at the
tiny-cpu preset's cadence (every 50 steps).

--device cuda: images/s, model TFLOP/s, MFU (model FLOPs from the config, against --peak-tflops) and peak memory
per stage of the fast bf16 step, for DiT-B/2 on 4x32x32 latents (ImageNet 256 through the SD VAE) by default.
"""

from __future__ import annotations

import argparse
import time

import torch

from alphaflow.config import apply_overrides
from alphaflow.model import MODEL_SIZES
from alphaflow.presets import get_preset
from alphaflow.train_state import TrainState

STAGES = (("alpha=1", 1.0), ("alpha=0.5", 0.5), ("alpha=0 (JVP)", 0.0))
VARIANTS = {"reference": ("reference", "fp32"), "fast fp32": ("fast", "fp32"), "fast auto": ("fast", "auto")}


def _state(size: str, batch: int, alpha: float, kernels: str, precision: str, shape, patch: int,
           device: str = "cpu", diagnostics: int = 0) -> TrainState:
    cfg = apply_overrides(get_preset("tiny-cpu"), {
        "model.size": size, "model.patch_size": patch, "batch_size": batch, "diagnostics_every": diagnostics,
        "total_steps": 10 ** 6, "alpha.kind": "constant", "alpha.start": alpha, "ratio_fm.start": 0.5,
        "kernels": kernels, "precision": precision})
    return TrainState(cfg, shape, 10, device=device)


def _plain(tr: TrainState, x, y):
    t = torch.rand(x.shape[0], device=x.device)

    def step():
        with tr._autocast():
            loss = (tr.model(x, t * 0.5, t, y).float() - x).pow(2).mean()
        tr.optimizer.zero_grad(set_to_none=False)   # as train_step (the fast path's gradients live in one buffer)
        loss.backward()
        tr.optimizer.step()
    return step


def bench_cpu(size: str, batch: int, steps: int, rounds: int,
              clock=time.process_time) -> dict[tuple[str, str], float]:
    shape = (1, 28, 28)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    fns = {}
    for variant, (kernels, precision) in VARIANTS.items():
        for stage, alpha in STAGES:
            tr = _state(size, batch, alpha, kernels, precision, shape, 4)
            fns[(variant, stage)] = lambda tr=tr: tr.train_step(x, y)
        fns[(variant, "plain fwd+bwd")] = _plain(tr, x, y)
    for fn in fns.values():   # warm-up (and the fused kernels' one-off compilation)
        fn()
        fn()
    best = {key: float("inf") for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = clock()
            for _ in range(steps):
                fn()
            best[key] = min(best[key], (clock() - t0) / steps)
    return best


def diagnostics_share(size: str, batch: int, every: int = 50, steps: int = 4) -> float:
    """Extra time of a grad_cos step, spread over `every` steps, as a share of the plain steps' time."""
    shape = (1, 28, 28)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    plain = _state(size, batch, 0.5, "fast", "auto", shape, 4)
    diag = _state(size, batch, 0.5, "fast", "auto", shape, 4, diagnostics=1)
    times = {}
    for name, tr in (("plain", plain), ("diag", diag)):
        tr.train_step(x, y)
        t0 = time.process_time()
        for _ in range(steps):
            tr.train_step(x, y)
        times[name] = (time.process_time() - t0) / steps
    return (times["diag"] - times["plain"]) / (every * times["plain"])


def model_flops(size: str, tokens: int, patch_dim: int) -> float:
    """Forward FLOPs per image: 2 x (linear MACs per token x tokens) + attention's QK^T and PV."""
    depth, width, _ = MODEL_SIZES[size]
    per_token = depth * (3 * width * width + width * width + 8 * width * width) + width * patch_dim
    attention = depth * 2 * tokens * tokens * width
    return 2.0 * (per_token * tokens + attention)


def bench_cuda(size: str, batch: int, image: tuple[int, int, int], patch: int, steps: int,
               peak_tflops: float) -> None:
    c, h, w = image
    tokens = (h // patch) * (w // patch)
    fwd = model_flops(size, tokens, patch * patch * c)
    print(f"device {torch.cuda.get_device_name()}  DiT-{size}/{patch}  latents {c}x{h}x{w} ({tokens} tokens)  "
          f"batch {batch}  fast kernels, bf16  peak {peak_tflops:.0f} TFLOP/s")
    print(f"{'stage':<15}{'ms/step':>9}{'img/s':>9}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}")
    x = torch.randn(batch, *image, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    # model FLOPs per image of one step: fwd + bwd (3x forward), plus the extra pass on the r < t half
    extra = {"alpha=1": 0.0, "alpha=0.5": 0.5, "alpha=0 (JVP)": 0.5}
    for stage, alpha in STAGES:
        tr = _state(size, batch, alpha, "fast", "bf16", image, patch, device="cuda")
        for _ in range(3):
            tr.train_step(x, y)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step(x, y)
        torch.cuda.synchronize()
        s = (time.perf_counter() - t0) / steps
        flops = batch * fwd * (3.0 + extra[stage])
        print(f"{stage:<15}{s * 1e3:>9.1f}{batch / s:>9.0f}{flops / s / 1e12:>9.1f}"
              f"{flops / s / 1e12 / peak_tflops:>7.1%}{torch.cuda.max_memory_allocated() / 2 ** 30:>10.2f}")
        del tr
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (CPU)")
    ap.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=4)
    # cpu: process time, robust to other load but it counts OpenMP's spin-waiting threads at 2 threads; wall: what a
    # user waits for, on an otherwise idle machine
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    ap.add_argument("--sizes", default=None, help="size:batch, comma separated (CPU: tiny:32,S:8; CUDA: B:64)")
    ap.add_argument("--image", default="4x32x32", help="CUDA latent shape CxHxW")
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    args = ap.parse_args()
    if args.device == "cuda":
        for item in (args.sizes or "B:64").split(","):
            size, batch = item.split(":")
            bench_cuda(size, int(batch), tuple(int(v) for v in args.image.split("x")), args.patch,
                       max(args.steps, 10), args.peak_tflops)
        return
    print(f"ratio_fm=0.5  image 1x28x28 patch 4  no CFG  (best of {args.rounds} interleaved rounds of "
          f"{args.steps} steps, {'CPU' if args.clock == 'cpu' else 'wall'} ms per step)")
    print(f"{'thr':>3} {'size':<5}{'batch':>6}  {'stage':<15}{'reference':>10}{'fast fp32':>10}{'x ref':>7}"
          f"{'fast auto':>10}{'x ref':>7}")
    for threads in (int(v) for v in args.threads.split(",")):
        torch.set_num_threads(threads)
        for item in (args.sizes or "tiny:32,S:8").split(","):
            size, batch = item.split(":")
            res = bench_cpu(size, int(batch), args.steps, args.rounds,
                            time.process_time if args.clock == "cpu" else time.perf_counter)
            for stage in ("plain fwd+bwd", *(s for s, _ in STAGES)):
                ref, f32, auto = (res[(v, stage)] for v in VARIANTS)
                print(f"{threads:>3} {size:<5}{batch:>6}  {stage:<15}{ref * 1e3:>10.1f}{f32 * 1e3:>10.1f}"
                      f"{f32 / ref:>7.2f}{auto * 1e3:>10.1f}{auto / ref:>7.2f}", flush=True)
    torch.set_num_threads(1)
    share = diagnostics_share("tiny", 32)
    print(f"grad_cos diagnostics (tiny, batch 32, every 50 steps, fast auto): {share:.1%} of training time")


if __name__ == "__main__":
    main()
