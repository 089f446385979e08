"""The Ray Train worker loop: data-parallel alpha-Flow training of one trial.

Every rank trains on its own disjoint shards; gradients are averaged by the alphaflow Trainer. Rank 0 evaluates,
logs to the trial's MLflow child run and passes checkpoints; every rank calls `ray.train.report` at the same steps
(docs/platform.md#reporting-from-every-rank), so Tune sees rank 0's metrics.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "model.pt"


class _RunLogger:
    """Rank 0's link to the trial's MLflow run: batched metric logging, artifacts."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and math.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def artifact(self, local_path: str, artifact_dir: str) -> None:
        self.client.log_artifact(self.run_id, local_path, artifact_dir)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def spent_before(self) -> dict[str, float]:
        """The cost a trial logged in earlier attempts (a restart, a resume): the largest of each running total."""
        out = {}
        for key in COST_KEYS:
            history = self.client.get_metric_history(self.run_id, key)
            out[key] = max((m.value for m in history), default=0.0)
        return out


# running totals of what the trial has cost, over every attempt; logged at every log step, so a restart loses at
# most one log interval of them
COST_KEYS = ("wall_s", "cpu_s", "gpu_s")


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _probes(trainer, cfg, decode, image_shape, num_classes: int, extractor, reference, n: int,
            nstep: int) -> dict[str, float]:
    """Extra scores on the same inputs: fid1 of every extra EMA half-life (fid1_ema<h>), and the N-step sampler of
    the instantaneous velocity u(z, t, t) (fid_v<N>, a probe of how well v is learned)."""
    from alphaflow.evaluation import score_sampler

    out = {}
    for hl in cfg.ema.extra_half_lives:
        m, _, _ = score_sampler(lambda z, y, hl=hl: trainer.sample(z, y, nfe=1, half_life=hl), decode, image_shape,
                                num_classes, extractor, reference, n)
        out[f"fid1_ema{hl:g}"] = m["fid"]
    if nstep > 0:
        m, _, _ = score_sampler(lambda z, y: trainer.sample_velocity(z, y, steps=nstep), decode, image_shape,
                                num_classes, extractor, reference, n)
        out[f"fid_v{nstep}"] = m["fid"]
    return out


def _quiet_report_lines() -> None:
    """Ray Train logs every ray.train.report at INFO from every rank, metrics dict and all: one such line per rank
    per evaluation buries the Tune status table in the launch output. Its logger is named after its file."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:   # another Ray layout: keep its lines rather than fail
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    _quiet_report_lines()

    from alphaflow.config import config_from_dict
    from alphaflow.data import get_codec, make_train_loader, read_manifest
    from alphaflow.evaluation import evaluate_generator
    from alphaflow.metrics import ReferenceStats, load_extractor, sample_grid_png
    from alphaflow.trainer import NonFiniteLossError, Trainer

    torch.set_num_threads(int(config["threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_dict(config["train_config"])
    manifest = read_manifest(config["manifest"])
    # the GPU Ray Train gave this worker (use_gpu: true), else the CPU
    device = ray.train.torch.get_device()
    trainer = Trainer(cfg, image_shape=tuple(manifest.image_shape), num_classes=manifest.num_classes,
                      device=str(device))

    best = {"fid1": math.inf, "fid2": math.inf, "fid1_step": 0, "fid2_step": 0}
    position = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # a restarted trial continues from its last report
        with ckpt.as_directory() as d:
            extra = trainer.load_checkpoint(str(Path(d) / CHECKPOINT_FILE))
        best.update(extra.get("best", {}))
        position = extra.get("position")

    per_rank_batch = max(1, cfg.batch_size // world)
    loader = make_train_loader(config["manifest"], batch_size=per_rank_batch, rank=rank, world_size=world,
                               seed=cfg.seed, mode=config["data_mode"], num_workers=config["loader_workers"],
                               position=position, on_corrupt=config.get("on_corrupt", "raise"),
                               verify=config.get("verify", "size"), cache_dir=config.get("cache_dir"),
                               device=trainer.device)

    log = _RunLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    if rank == 0:
        extractor = load_extractor(config["extractor"])
        # this node's own copy (an S3 manifest's statistics are cached locally by read_manifest on each node)
        reference = ReferenceStats.load(manifest.fid_reference)
        codec = get_codec(manifest.codec)
        mean = torch.tensor(manifest.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(manifest.std, dtype=torch.float32).view(1, -1, 1, 1)
        data_info = {"mean": list(map(float, manifest.mean)), "std": list(map(float, manifest.std)),
                     "codec": manifest.codec, "dataset_id": manifest.dataset_id,
                     "class_names": list(manifest.class_names or [])}

    total = cfg.total_steps
    eval_every, log_every = int(config["eval_every"]), int(config["log_every"])
    wall0, cpu0 = time.time(), _cpu_seconds()
    before = log.spent_before() if rank == 0 else {}

    def cost() -> dict[str, float]:
        # rank 0's CPU time stands for every rank's (they run the same loop); GPU-seconds are held GPU time
        wall = time.time() - wall0
        return {"wall_s": before["wall_s"] + wall, "cpu_s": before["cpu_s"] + (_cpu_seconds() - cpu0) * world,
                "gpu_s": before["gpu_s"] + (wall * world if torch.cuda.is_available() else 0.0)}
    # running sums and counts per key: some logs (grad_cos, loss_fm) appear only on some steps
    running: dict[str, float] = {}
    counts: dict[str, int] = {}

    def decode(z: torch.Tensor):
        return codec.decode(z * std + mean)

    def evaluate_and_report(step: int) -> None:
        metrics: dict[str, Any] = {"step": step, "total_steps": total}
        checkpoint = None
        if rank == 0:
            result = evaluate_generator(
                sample_fn=lambda z, y, nfe: trainer.sample(z, y, nfe=nfe, ema=True),
                decode_fn=decode,
                image_shape=tuple(manifest.image_shape), num_classes=manifest.num_classes,
                extractor=extractor, reference=reference, n=int(config["eval_samples"]),
                two_nfe_name=cfg.sampling.two_nfe,
            )
            m = dict(result.metrics)
            m.update(_probes(trainer, cfg, decode, tuple(manifest.image_shape), manifest.num_classes, extractor,
                             reference, int(config["eval_samples"]), int(config.get("eval_nstep", 0))))
            improved = m["fid1"] < best["fid1"]
            if improved:
                best["fid1"], best["fid1_step"] = m["fid1"], step
            if m["fid2"] < best["fid2"]:
                best["fid2"], best["fid2_step"] = m["fid2"], step
            m.update(fid1_best=best["fid1"], fid2_best=best["fid2"], fid1_best_step=best["fid1_step"],
                     fid2_best_step=best["fid2_step"])
            m.update(step=step, **cost())
            log.metrics(m, step)
            with tempfile.TemporaryDirectory() as tmp:
                grid = Path(tmp) / f"step{step:07d}_nfe1.png"
                sample_grid_png(result.images[1], result.labels, str(grid))
                log.artifact(str(grid), "samples")
            ckpt_dir = tempfile.mkdtemp(prefix="afsweep-ckpt-")
            path = str(Path(ckpt_dir) / CHECKPOINT_FILE)
            trainer.save_checkpoint(path, extra={"best": best, "data": data_info,
                                                 "position": getattr(loader, "position", lambda: None)()})
            if improved:  # the registered model is the trial's best EMA checkpoint
                log.artifact(path, "checkpoint")
            checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir)
            metrics.update(m)
            # the adaptive-weighted loss sits near 1 by construction; the unweighted MSE shows progress
            for key in ("loss", "loss_unweighted"):
                metrics[key] = running[key] / counts[key] if counts.get(key) else float("nan")
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint is not None:  # report() has copied it into the run's storage
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    if trainer.step == 0 and config.get("eval_at_start", True):
        evaluate_and_report(0)  # the untrained model's score, the baseline every trial is compared with

    batches = iter(loader)
    while trainer.step < total:
        x, y = next(batches)
        try:
            logs = trainer.train_step(x, y)
        except NonFiniteLossError as e:
            if rank == 0:
                log.tag("afsweep.error", str(e))
            raise
        for k, v in logs.items():
            running[k] = running.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
        step = trainer.step
        if rank == 0 and step % log_every == 0:
            log.metrics({**{k: v / counts[k] for k, v in running.items()}, **cost()}, step)
        if step % eval_every == 0 or step == total:
            evaluate_and_report(step)
            running, counts = {}, {}
        elif step % log_every == 0:
            running, counts = {}, {}
