"""The Ray Train worker loop: data-parallel alpha-Flow training of one trial.

Every rank trains on its own disjoint shards; gradients are averaged by the alphaflow TrainState. Rank 0 evaluates,
logs to the trial's MLflow child run and passes checkpoints (its `Evaluator`); every rank calls `ray.train.report`
at the same steps (docs/platform.md#reporting-from-every-rank), so Tune sees rank 0's metrics.
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

import ray.train
import ray.train.torch
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from alphaflow.data import make_train_loader, read_manifest
from alphaflow.errors import first_line
from alphaflow.evaluation import LatentDecoder, evaluate_generator, score_sampler
from alphaflow.metrics import ReferenceStats, load_extractor
from alphaflow.metrics.grid import grid_image
from alphaflow.train_state import NonFiniteLossError, TrainState
from orchestrator.platform.ray_adapter import quiet_train_report_lines
from orchestrator.spec.objectives import new_best, update_best
from orchestrator.spec.trial_config import TrialConfig
from orchestrator.tracking import CHECKPOINT_ARTIFACT, through_outages

_logger = logging.getLogger("afsweep.worker")
CHECKPOINT_FILE = "model.pt"
# the evaluation noise of a confirmation run's re-scoring: not the seed (1234) of every evaluation during training
RESCORE_SEED = 987_654_321
# running totals of what the trial has cost, over every attempt; logged at every log step, so a restart loses at
# most one log interval of them
COST_KEYS = ("wall_s", "cpu_s", "gpu_s")


class RunLogger:
    """Rank 0's link to the trial's MLflow run: batched metric logging, artifacts, tags."""

    def __init__(self, tracking_uri: str, run_id: str):
        # one quick attempt per call: our own loop (tracking.through_outages) waits out a server that is down
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.uri, self.run_id = tracking_uri, run_id
        self._system = None   # MLflow's system-metrics monitor, once started
        history = {key: self._call("reading the cost so far", self.client.get_metric_history, run_id, key)
                   for key in COST_KEYS}
        # the cost earlier attempts (a restart, a resume) logged: the largest of each running total
        self.spent_before = {key: max((m.value for m in h), default=0.0) for key, h in history.items()}
        # a restarted attempt redoes the steps after its checkpoint: what an earlier attempt logged is not logged
        # again (every log and evaluation step logs wall_s)
        self.logged_until = max((m.step for m in history["wall_s"]), default=-1)

    def restarted_at(self, step: int) -> None:
        """A restarted attempt resumes from `step`: the metric `restarts` counts attempts, each at its step."""
        done = self._call("reading the restarts", self.client.get_metric_history, self.run_id, "restarts")
        metric = Metric("restarts", float(len(done) + 1), int(time.time() * 1000), step)
        self._call("logging the restart", self.client.log_batch, self.run_id, metrics=[metric])

    def metrics(self, values: dict[str, float], step: int) -> None:
        if step <= self.logged_until:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and math.isfinite(v)]
        if batch:
            self._call(f"logging step {step}", self.client.log_batch, self.run_id, metrics=batch)

    def artifact(self, local_path: str, artifact_dir: str) -> None:
        self._call(f"uploading {artifact_dir}/{Path(local_path).name}", self.client.log_artifact, self.run_id,
                   local_path, artifact_dir)

    def image(self, image, key: str, step: int) -> None:
        if step <= self.logged_until:
            return
        self._call(f"logging {key} at step {step}", self.client.log_image, self.run_id, image, key=key, step=step,
                   synchronous=True)

    def start_system_metrics(self, resumed: bool) -> None:
        """CPU, memory, disk, network (and GPU, with nvidia-ml-py installed) of this node as `system/...`
        metrics, every AFSWEEP_SYSTEM_METRICS_S seconds (default 10), as MLflow's own monitor does for
        `start_run(log_system_metrics=True)`; a restarted attempt continues the steps."""
        try:  # needs psutil (optional for MLflow); only rank 0 of a trial loads it
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            interval = float(os.environ.get("AFSWEEP_SYSTEM_METRICS_S", "10"))
            self._system = SystemMetricsMonitor(self.run_id, sampling_interval=interval, resume_logging=resumed,
                                                tracking_uri=self.uri)
            self._system.start()
        except Exception as e:  # psutil missing, a store that refuses: the training goes on without them
            _logger.warning("no system metrics for run %s: %s", self.run_id, first_line(e))
            self._system = None

    def stop_system_metrics(self) -> None:
        if self._system is not None:
            self._system.finish()
            self._system = None

    def final(self, values: dict[str, float], step: int) -> None:
        """Metrics logged once at the end, whatever an earlier attempt logged (a restart logs the same values)."""
        batch = [Metric(k, float(v), int(time.time() * 1000), step) for k, v in values.items() if math.isfinite(v)]
        self._call(f"logging the final scores at step {step}", self.client.log_batch, self.run_id, metrics=batch)

    def download(self, artifact: str) -> str:
        folder = tempfile.mkdtemp(prefix="afsweep-artifact-")
        return self._call(f"downloading {artifact}", self.client.download_artifacts, self.run_id, artifact, folder)

    def tag(self, key: str, value: str) -> None:
        self._call(f"setting {key}", self.client.set_tag, self.run_id, key, value)

    def _call(self, what: str, fn, *args, **kwargs):
        return through_outages(what, fn, *args, uri=self.uri, **kwargs)


class CostClock:
    """Wall, CPU and GPU seconds of the trial so far, this attempt added to what earlier attempts spent."""

    def __init__(self, world: int, before: dict[str, float]):
        self.world, self.before = world, before
        self.wall0, self.cpu0 = time.time(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    def totals(self) -> dict[str, float]:
        # rank 0's CPU time stands for every rank's (they run the same loop); GPU-seconds are held GPU time
        wall = time.time() - self.wall0
        return {"wall_s": self.before["wall_s"] + wall,
                "cpu_s": self.before["cpu_s"] + (self._cpu() - self.cpu0) * self.world,
                "gpu_s": self.before["gpu_s"] + (wall * self.world if torch.cuda.is_available() else 0.0)}


class RunningMeans:
    """Per-key means of the step logs since the last reset (some keys, e.g. grad_cos, appear on some steps)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


class Evaluator:
    """Rank 0's evaluation: score 1- and 2-NFE samples (and the probes), keep the best, log grids and checkpoints."""

    def __init__(self, train_state, manifest, trial, log: RunLogger):
        self.train_state, self.manifest, self.trial, self.log = train_state, manifest, trial, log
        self.extractor = load_extractor(trial.sweep.extractor)
        # this node's own copy (an S3 manifest's statistics are cached locally by read_manifest on each node)
        self.reference = ReferenceStats.load(manifest.fid_reference)
        self.decode = LatentDecoder.of(manifest)
        self.best = new_best()  # what the search learns from (orchestrator/spec/objectives.py)
        self.data_info = {"mean": list(map(float, manifest.mean)), "std": list(map(float, manifest.std)),
                          "codec": manifest.codec, "dataset_id": manifest.dataset_id,
                          "class_names": list(manifest.class_names or [])}

    def _score(self, sample_fn) -> float:
        m, _, _ = score_sampler(sample_fn, self.decode, tuple(self.manifest.image_shape), self.manifest.num_classes,
                                self.extractor, self.reference, self.trial.train.eval_samples)
        return m["fid"]

    def scores(self):
        """fid1, fid2 and their companions; fid1 of every extra EMA half-life (fid1_ema<h>); the N-step sampler of
        the instantaneous velocity u(z, t, t) (fid_v<N>, a probe of how well v is learned)."""
        cfg, train_state = self.trial.method, self.train_state
        result = evaluate_generator(
            sample_fn=lambda z, y, nfe: train_state.sample(z, y, nfe=nfe, ema=True), decode_fn=self.decode,
            image_shape=tuple(self.manifest.image_shape), num_classes=self.manifest.num_classes,
            extractor=self.extractor, reference=self.reference, n=self.trial.train.eval_samples,
            two_nfe_name=cfg.sampling.two_nfe)
        m = dict(result.metrics)
        for hl in cfg.ema.extra_half_lives:
            m[f"fid1_ema{hl:g}"] = self._score(lambda z, y, hl=hl: train_state.sample(z, y, nfe=1, half_life=hl))
        if self.trial.train.eval_nstep > 0:
            n = self.trial.train.eval_nstep
            m[f"fid_v{n}"] = self._score(lambda z, y: train_state.sample_velocity(z, y, steps=n))
        return m, result

    def sample_grid(self, result, step: int) -> None:
        """The 1- and 2-NFE grids as MLflow images with their step (`samples_nfe1`, `samples_nfe2`): the run's
        image view shows them on a step slider."""
        for nfe, images in sorted(result.images.items()):
            self.log.image(grid_image(images, result.labels), f"samples_nfe{nfe}", step)

    def checkpoint(self, position, improved: bool = False) -> str:
        """A checkpoint folder for Ray Train; the trial's best EMA weights also go to MLflow (what is registered)."""
        ckpt_dir = tempfile.mkdtemp(prefix="afsweep-ckpt-")
        path = str(Path(ckpt_dir) / CHECKPOINT_FILE)
        self.train_state.save_checkpoint(path, extra={"best": self.best, "data": self.data_info, "position": position})
        if improved:
            self.log.artifact(path, "checkpoint")
        return ckpt_dir

    def rescore(self, n: int) -> dict[str, float]:
        """The picked checkpoint (the one of the best fid1, kept in MLflow) scored again on fresh noise and labels
        (RESCORE_SEED, N samples): its training-time score chose it, so that score is optimistic; one on noise the
        choice never saw is not. Logged as fid1_rescored, fid2_rescored and their standard errors."""
        self.train_state.load_checkpoint(self.log.download(CHECKPOINT_ARTIFACT))
        m = evaluate_generator(
            sample_fn=lambda z, y, nfe: self.train_state.sample(z, y, nfe=nfe, ema=True), decode_fn=self.decode,
            image_shape=tuple(self.manifest.image_shape), num_classes=self.manifest.num_classes,
            extractor=self.extractor, reference=self.reference, n=n, seed=RESCORE_SEED,
            two_nfe_name=self.trial.method.sampling.two_nfe).metrics
        scores = {"fid1_rescored": m["fid1"], "fid1_rescored_se": m["fid1_se"], "fid2_rescored": m["fid2"],
                  "fid2_rescored_se": m["fid2_se"]}
        scores["rescored_step"] = float(self.best["fid1_step"])
        self.log.final(scores, self.trial.method.total_steps)
        return scores

    def evaluate(self, step: int, cost: dict[str, float], means: dict[str, float], position) -> tuple[dict, str]:
        m, result = self.scores()
        improved = update_best(self.best, m, step)
        # one log per step: the training means of this interval with the scores and the cost
        self.log.metrics({**means, **m, "step": step, **cost}, step)
        m.update(step=step, **cost)
        self.sample_grid(result, step)
        ckpt_dir = self.checkpoint(position, improved)
        # the adaptive-weighted loss sits near 1 by construction; the unweighted MSE shows progress
        for key in ("loss", "loss_unweighted"):
            m[key] = means.get(key, float("nan"))
        return m, ckpt_dir


def _report(step: int, total: int, evaluator: Evaluator | None, cost, means, position, score: bool = True) -> None:
    """Every rank reports at the same steps; rank 0 adds a checkpoint, and its scores when `score`."""
    metrics: dict[str, Any] = {"step": step, "total_steps": total}
    if evaluator is None:
        ray.train.report(metrics)
        return
    if score:
        scores, ckpt_dir = evaluator.evaluate(step, cost, means, position)
    else:
        scores, ckpt_dir = {}, evaluator.checkpoint(position)
    ray.train.report({**metrics, **scores}, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir))
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # report() has copied it into the run's storage


DIVERGED_KEY = "diverged"  # the last report of a trial whose loss went non-finite: the error line
DIVERGED_FILE = "diverged.txt"  # ... and its checkpoint, which holds only that line


def _report_divergence(message: str, step: int, total: int, rank0: bool) -> None:
    """The trial's last report: the error line, in a checkpoint of its own so the trial function reads it from
    the Train result (Ray Train's result carries the metrics of the latest checkpoint)."""
    metrics = {"step": step, "total_steps": total, DIVERGED_KEY: message}
    if not rank0:
        ray.train.report(metrics)
        return
    folder = tempfile.mkdtemp(prefix="afsweep-diverged-")
    (Path(folder) / DIVERGED_FILE).write_text(message)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    shutil.rmtree(folder, ignore_errors=True)


def train_loop(config: dict[str, Any]) -> None:
    quiet_train_report_lines()
    trial: TrialConfig = config["trial"]
    cfg, train = trial.method, trial.train
    torch.set_num_threads(train.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    manifest = read_manifest(trial.sweep.manifest)
    # the GPU Ray Train gave this worker (use_gpu: true), else the CPU
    train_state = TrainState(cfg, image_shape=tuple(manifest.image_shape), num_classes=manifest.num_classes,
                             device=str(ray.train.torch.get_device()))
    log = RunLogger(trial.sweep.tracking_uri, trial.run_id) if rank == 0 else None
    evaluator = Evaluator(train_state, manifest, trial, log) if rank == 0 else None

    position = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # a restarted trial continues from its last report (restarts: counted, at that step)
        with ckpt.as_directory() as d:
            if (Path(d) / DIVERGED_FILE).exists():  # a resumed trial that had diverged: it ends the same way
                _report_divergence((Path(d) / DIVERGED_FILE).read_text(), 0, cfg.total_steps, rank == 0)
                return
            extra = train_state.load_checkpoint(str(Path(d) / CHECKPOINT_FILE))
        if evaluator is not None:
            evaluator.best.update(extra.get("best", {}))
        position = extra.get("position")
        if log:
            log.restarted_at(train_state.step)

    d = trial.data
    loader = make_train_loader(trial.sweep.manifest, batch_size=max(1, cfg.batch_size // world), rank=rank,
                               world_size=world, seed=cfg.seed, mode=d.order, num_workers=d.loader_workers,
                               position=position,
                               on_corrupt=d.on_corrupt, verify=d.verify, cache_dir=d.cache_dir,
                               device=train_state.device)
    clock = CostClock(world, log.spent_before if log else dict.fromkeys(COST_KEYS, 0.0))
    means = RunningMeans()
    total = cfg.total_steps

    def report(step: int, score: bool = True) -> None:
        _report(step, total, evaluator, clock.totals(), means.means(), loader.position(), score)

    if log:
        log.start_system_metrics(resumed=ckpt is not None)
    try:
        if train_state.step == 0:
            report(0)  # the untrained model's score, the baseline every trial is compared with
        batches = iter(loader)
        while train_state.step < total:
            x, y = next(batches)
            try:
                means.add(train_state.train_step(x, y))
            except NonFiniteLossError as e:
                # every rank sees the same all-reduced loss and stops here together. Not raised: Ray Train would
                # restart the worker group from its checkpoint and diverge again; the trial fails once, clearly.
                if log:
                    log.tag("afsweep.error", str(e))
                _report_divergence(str(e), train_state.step, total, rank == 0)
                return
            step = train_state.step
            evaluating = step % train.eval_every == 0 or step == total
            if log and step % train.log_every == 0 and not evaluating:  # an evaluation logs the means itself
                log.metrics({**means.means(), **clock.totals(), "samples_skipped": loader.skipped}, step)
            if evaluating:
                report(step)
                means.reset()
                continue
            if step % train.checkpoint_every == 0:
                report(step, score=False)
            if step % train.log_every == 0:
                means.reset()
        if evaluator is not None and trial.rescore_samples:   # a confirmation run: its unbiased score
            evaluator.rescore(trial.rescore_samples)
    finally:
        if log:
            log.stop_system_metrics()
