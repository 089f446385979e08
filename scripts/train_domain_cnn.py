"""Train a domain CNN once (the feature space of the small-data FID) and write its weights and sha256.

    python scripts/train_domain_cnn.py fashion-mnist-cnn        # ~5 min on 2 CPU cores
    python scripts/train_domain_cnn.py digits-cnn

Deterministic (fixed seed, single-threaded by default), trained on the train split only; prints the test accuracy.
Writes alphaflow/metrics/weights/<id>.pt and <id>.sha256. The metric never retrains: changing these files changes
the feature space, and reference statistics made with the old weights are then refused by their sha256.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaflow.data.sources import load_builtin  # noqa: E402
from alphaflow.metrics.domain_cnn import DOMAINS, DomainCNN, spec_to_dict, to_input  # noqa: E402
from alphaflow.metrics.extractors import WEIGHTS_DIR, file_sha256  # noqa: E402

DEFAULT_EPOCHS = {"fashion-mnist-cnn": 4, "digits-cnn": 60}


def evaluate(net: nn.Module, images: np.ndarray, labels: np.ndarray, spec) -> float:
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), 1000):
            pred = net(to_input(images[i:i + 1000], spec)).argmax(1).numpy()
            correct += int((pred == labels[i:i + 1000]).sum())
    return correct / len(images)


def train(extractor_id: str, epochs: int, seed: int, batch_size: int, lr: float) -> tuple[nn.Module, float]:
    spec = DOMAINS[extractor_id]
    x_train, y_train = load_builtin(spec.dataset_id, "train")
    x_test, y_test = load_builtin(spec.dataset_id, "test")
    torch.manual_seed(seed)
    net = DomainCNN.for_spec(spec)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(seed)
    y_all = torch.from_numpy(y_train)
    for epoch in range(epochs):
        net.train()
        t0, total, n = time.time(), 0.0, 0
        for idx in np.array_split(rng.permutation(len(x_train)), steps // epochs):
            logits = net(to_input(x_train[idx], spec))
            loss = nn.functional.cross_entropy(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        acc = evaluate(net, x_test, y_test, spec)
        print(f"epoch {epoch + 1}/{epochs}: train loss {total / n:.4f}, test accuracy {acc:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    return net, evaluate(net, x_test, y_test, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("extractor_id", choices=sorted(DOMAINS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    epochs = args.epochs or DEFAULT_EPOCHS[args.extractor_id]
    net, acc = train(args.extractor_id, epochs, args.seed, args.batch_size, args.lr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{args.extractor_id}.pt"
    blob = {"state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "spec": spec_to_dict(DOMAINS[args.extractor_id]), "test_accuracy": acc, "epochs": epochs,
            "seed": args.seed, "torch_version": str(torch.__version__)}
    torch.save(blob, path)
    digest = file_sha256(path)
    path.with_suffix(".sha256").write_text(f"{digest}  {path.name}\n")
    print(f"{args.extractor_id}: test accuracy {acc:.4f}; wrote {path} ({path.stat().st_size / 1e6:.2f} MB), "
          f"sha256 {digest}")


if __name__ == "__main__":
    main()
