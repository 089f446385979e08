"""Speed of the FID feature extractors and of one sweep evaluation on this machine, and the calibration table.

    .venv/bin/python benchmarks/feature_speed.py [--threads 2] [--n 1000] [--dinov2 PATH] [--skip-calibration]

Prints three tables:
1. features/s of each extractor (DINOv2 with random ViT-S/14 weights when no checkpoint is given: speed only);
2. one sweep evaluation at N samples (the worker's evaluate_generator on the tiny-cpu preset's DiT at 1x28x28):
   sampling and scoring timed separately, for 1 and 2 NFE;
3. Fashion-MNIST calibration with the domain CNN at 10k vs 10k (held-out train images vs the test-split reference).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaflow.data.sources import load_builtin  # noqa: E402
from alphaflow.metrics import compute_reference_stats, load_extractor, sample_metrics  # noqa: E402
from alphaflow.metrics.calibration import calibration_table  # noqa: E402
from alphaflow.metrics.extractors import default_inception_path  # noqa: E402


def _rate(ext, images, repeats: int = 1) -> float:
    ext.features(images[:2])  # warm-up (first-call allocations, TorchScript profiling)
    t0 = time.perf_counter()
    for _ in range(repeats):
        ext.features(images)
    return repeats * len(images) / (time.perf_counter() - t0)


def extractor_speeds(dinov2_path: str | None) -> list[tuple[str, str, float]]:
    fashion, _ = load_builtin("fashion-mnist", "test")
    digits, _ = load_builtin("digits", "test")
    rows = [("fashion-mnist-cnn", "1x28x28", _rate(load_extractor("fashion-mnist-cnn"), fashion[:5000])),
            ("digits-cnn", "1x8x8", _rate(load_extractor("digits-cnn"), digits, repeats=5))]
    path = default_inception_path()
    if path is not None and path.is_file():
        rows.append(("inception-v3-tf", "1x28x28 -> 299", _rate(load_extractor("inception-v3-tf"), fashion[:32])))
    if dinov2_path:
        ext = load_extractor(f"dinov2:{dinov2_path}")
        rows.append((ext.id, "1x28x28 -> 224", _rate(ext, fashion[:16])))
    else:
        import tempfile

        from alphaflow.metrics.dinov2 import DINOv2ViT, ViTConfig

        vits = ViTConfig(patch_size=14, embed_dim=384, depth=12, num_heads=6, ffn_hidden=1536, pos_grid=37)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(DINOv2ViT(vits).state_dict(), Path(tmp) / "vits14.pth")
            ext = load_extractor(f"dinov2:{Path(tmp) / 'vits14.pth'}")
            rows.append(("dinov2-vits14 (random weights)", "1x28x28 -> 224", _rate(ext, fashion[:16])))
    return rows


def sweep_evaluation(n: int) -> list[tuple[str, float]]:
    from alphaflow.data import get_codec
    from alphaflow.evaluation import eval_inputs
    from alphaflow.presets import get_preset
    from alphaflow.train_state import TrainState

    rows = []
    x_test, _ = load_builtin("fashion-mnist", "test")
    ext = load_extractor("fashion-mnist-cnn")
    t0 = time.perf_counter()
    ref = compute_reference_stats(x_test, ext, "fashion-mnist:test")
    rows.append(("reference statistics, 10k test images (once per data set)", time.perf_counter() - t0))
    cfg = get_preset("tiny-cpu")
    train_state = TrainState(cfg, image_shape=(1, 28, 28), num_classes=10)
    codec = get_codec("identity")
    noise, labels = eval_inputs(n, (1, 28, 28), 10, seed=1234)
    total = 0.0
    for nfe in (1, 2):
        t0 = time.perf_counter()
        imgs = np.concatenate([codec.decode(train_state.sample(noise[i:i + 500], labels[i:i + 500], nfe=nfe))
                               for i in range(0, n, 500)])
        t1 = time.perf_counter()
        sample_metrics(imgs, labels.numpy(), ext, ref)
        t2 = time.perf_counter()
        rows.append((f"{nfe}-NFE sampling, {cfg.model.size} DiT, N={n}", t1 - t0))
        rows.append((f"{nfe}-NFE features + fid/class_acc/precision/recall/kid, N={n}", t2 - t1))
        total += t2 - t0
    rows.append((f"one sweep evaluation (1 and 2 NFE), N={n}", total))
    return rows


def calibration() -> tuple[dict[str, float], float]:
    x_train, y_train = load_builtin("fashion-mnist", "train")
    x_test, _ = load_builtin("fashion-mnist", "test")
    ext = load_extractor("fashion-mnist-cnn")
    idx = np.random.default_rng(0).permutation(len(x_train))[:10000]
    t0 = time.perf_counter()
    ref = compute_reference_stats(x_test, ext, "fashion-mnist:test")
    table = calibration_table(ext, ref, x_train[idx], y_train[idx])
    return table, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000, help="samples of the sweep evaluation")
    ap.add_argument("--dinov2", default=None, help="a DINOv2 hub checkpoint (default: random ViT-S/14, speed only)")
    ap.add_argument("--skip-calibration", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with threadpool_limits(args.threads):
        print(f"torch {torch.__version__}, {args.threads} threads")
        print(f"\n{'extractor':<32} {'input':<16} {'images/s':>10}")
        for name, shape, rate in extractor_speeds(args.dinov2):
            print(f"{name:<32} {shape:<16} {rate:>10.1f}")

        print(f"\n{'sweep evaluation step':<64} {'seconds':>8}")
        for name, secs in sweep_evaluation(args.n):
            print(f"{name:<64} {secs:>8.2f}")

        if not args.skip_calibration:
            table, secs = calibration()
            print(f"\nFashion-MNIST calibration, fashion-mnist-cnn, 10k held-out train images vs 10k test reference "
                  f"({secs:.0f} s)")
            print(f"{'set':<24} {'FID':>9}")
            for name, fid in table.items():
                print(f"{name:<24} {fid:>9.2f}")


if __name__ == "__main__":
    main()
