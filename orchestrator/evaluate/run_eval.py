"""FID-N of a trial's checkpoint, or of a registered model, in a chosen feature space.

    afsweep eval RUN_ID --n 1000                                  # the data set's domain CNN, 1 and 2 NFE
    afsweep eval models:/afsweep-fashion-mnist@best-fid1 --extractor inception-v3-tf --n 500 --nfe 1

The checkpoint is the run's `checkpoint/model.pt` artifact (for a registered model: the run behind the version).
Samples use the same fixed noise and balanced labels as the training-time evaluation (alphaflow.evaluation), so
with the same extractor, N and seed the numbers equal the worker's. Results are logged to that same run as
`fid<nfe>_<extractor>_n<N>` (and class_acc/precision/recall/kid likewise) at the checkpoint's step.

Reference statistics: --reference, else the data set's prepared statistics (domain CNN), else computed once from
the built-in data set's test split and cached under RUN_DIR/references/.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from alphaflow.checkpoint import load_generator
from alphaflow.config import config_from_dict
from alphaflow.data import read_manifest
from alphaflow.data.sources import BUILTIN_DATASETS, load_builtin
from alphaflow.errors import InputError, first_line
from alphaflow.evaluation import LatentDecoder, score_sampler
from alphaflow.metrics import (
    IncompatibleReferenceError,
    ReferenceStats,
    compute_reference_stats,
    load_extractor,
    sample_grid_png,
)
from alphaflow.sampling import sample
from alphaflow.train_state import EVAL_NOISE_SEED, sampling_guidance
from orchestrator.spec.trial_config import DOMAIN_EXTRACTOR
from orchestrator.tracking import CHECKPOINT_ARTIFACT


class EvalError(RuntimeError):
    """A one-line failure of `afsweep eval`."""


class EvalInputError(EvalError, InputError):
    """A target or option of `afsweep eval` that names nothing usable (exit 2)."""


def resolve_run_id(client, target: str) -> str:
    """A run id, or the run behind models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID (a logged model)."""
    if target.startswith("models:/"):
        ref = target[len("models:/"):]
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            elif "/" in ref:
                name, number = ref.split("/", 1)
                version = client.get_model_version(name, number)
            elif ref.startswith("m-"):  # an MLflow 3 logged model id, as in a registered version's source
                run_id = client.get_logged_model(ref).source_run_id
                if not run_id:
                    raise EvalInputError(f"{target}: the logged model records no source run")
                return run_id
            else:
                raise EvalInputError(f"{target}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID")
        except MlflowException as e:
            raise EvalInputError(f"{target}: not in the model registry ({first_line(e, 200)})") from None
        if not version.run_id:
            raise EvalError(f"{target}: version {version.version} records no source run")
        return version.run_id
    try:
        return client.get_run(target).info.run_id
    except MlflowException as e:
        raise EvalInputError(f"run {target}: not found ({first_line(e, 200)})") from None


def download_checkpoint(client, run_id: str, dst: str) -> str:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr to our one-line messages
    try:
        return client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, dst)
    except (MlflowException, OSError) as e:
        raise EvalError(f"run {run_id}: no {CHECKPOINT_ARTIFACT} artifact ({first_line(e, 200)})") from None


def _manifest_reference(client, run_id: str) -> str | None:
    """The prepared FID statistics of the sweep's data, via the parent run's `manifest` param."""
    run = client.get_run(run_id)
    manifest = run.data.params.get("manifest")
    parent = run.data.tags.get("mlflow.parentRunId")
    if not manifest and parent:
        manifest = client.get_run(parent).data.params.get("manifest")
    if not manifest:
        return None

    try:
        return read_manifest(manifest).fid_reference
    except Exception:  # the data may have moved since the sweep; the caller falls back to the built-in data
        return None


def reference_for(extractor, dataset_id: str, explicit: Path | None, client, run_id: str, run_dir: Path,
                  reference_n: int, echo):
    """Reference statistics compatible with the extractor and the data set (see the module docstring)."""
    if explicit is not None:
        ref = ReferenceStats.load(explicit)
        ref.check_compatible(extractor, dataset_id, where=str(explicit))
        return ref, str(explicit)
    prepared = _manifest_reference(client, run_id)
    if prepared:
        ref = ReferenceStats.load(prepared)
        try:
            ref.check_compatible(extractor, dataset_id, where=prepared)
            return ref, prepared
        except IncompatibleReferenceError:
            pass  # prepared for another extractor: compute statistics for this one below
    base = dataset_id.split(":")[0]
    cache = run_dir / "references" / f"{base}_test_{extractor.id}_n{reference_n}_{extractor.sha256[:12]}.npz"
    if cache.exists():
        ref = ReferenceStats.load(cache)
        ref.check_compatible(extractor, dataset_id, where=str(cache))
        return ref, str(cache)

    if base not in BUILTIN_DATASETS:
        raise EvalError(f"data set {dataset_id}: no reference statistics for {extractor.id}; pass --reference")
    images, _ = load_builtin(base, "test")
    images = images[:reference_n]
    echo(f"afsweep: computing {extractor.id} reference statistics of {len(images)} {base} test images "
         f"(once; cached at {cache})")
    ref = compute_reference_stats(images, extractor, f"{base}:test")
    ref.save(cache)
    return ref, str(cache)


def evaluate_run(client, run_id: str, extractor_id: str | None, n: int, nfes: tuple[int, ...], batch_size: int,
                 seed: int, reference: Path | None, run_dir: Path, reference_n: int, echo) -> dict:
    """Sample, score and return {"metrics": {...}, "step", "extractor", "reference", "images", "labels"}."""
    # an unknown extractor id fails here, before the checkpoint is downloaded
    extractor = load_extractor(extractor_id) if extractor_id else None
    with tempfile.TemporaryDirectory() as tmp:
        model, info = load_generator(download_checkpoint(client, run_id, tmp), ema=True)
    data = info["extra"].get("data")
    if not data:
        raise EvalError(f"run {run_id}: the checkpoint records no data info (extra['data'])")
    dataset_id = data.get("dataset_id", "")
    extractor_id = extractor_id or DOMAIN_EXTRACTOR.get(dataset_id.split(":")[0])
    if not extractor_id:
        raise EvalInputError(f"data set {dataset_id!r} has no domain CNN; choose --extractor (e.g. inception-v3-tf)")
    extractor = extractor or load_extractor(extractor_id)
    ref, ref_path = reference_for(extractor, dataset_id, reference, client, run_id, run_dir, reference_n, echo)

    decode = LatentDecoder(data.get("codec", "identity"), data["mean"], data["std"])
    cfg = config_from_dict(info["config"])
    two_nfe, t_mid = cfg.sampling.two_nfe, cfg.sampling.t_mid
    shape, classes = tuple(info["image_shape"]), info["num_classes"]

    def sampler(nfe: int):
        def fn(noise, labels):
            # as TrainState.sample: the consistency sampler's fresh noise restarts from one seed in every batch
            gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)
            return sample(model, noise, labels, nfe=nfe, two_nfe=two_nfe, t_mid=t_mid, generator=gen,
                          g=sampling_guidance(cfg, noise.shape[0], noise.device))
        return fn

    metrics, images, timings = {}, {}, {}
    for nfe in nfes:
        t0 = time.time()
        m, images[nfe], labels = score_sampler(sampler(nfe), decode, shape, classes, extractor, ref, n, seed,
                                               batch_size)
        timings[nfe] = time.time() - t0
        for key, value in m.items():
            if key != "n":
                name = f"fid{nfe}_se" if key == "fid_se" else f"{key}{nfe}"   # fid1_se, as the sweep logs it
                metrics[f"{name}_{extractor.id}_n{n}"] = float(value)
    return {"metrics": metrics, "step": info["step"], "extractor": extractor, "reference": ref_path,
            "images": images, "labels": labels, "timings": timings, "dataset_id": dataset_id}


def log_results(client, run_id: str, result: dict, n: int) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, int(result["step"])) for k, v in result["metrics"].items() if math.isfinite(v)]
    client.log_batch(run_id, metrics=batch)

    with tempfile.TemporaryDirectory() as tmp:
        for nfe, imgs in result["images"].items():
            path = Path(tmp) / f"eval_nfe{nfe}_{result['extractor'].id}_n{n}.png"
            sample_grid_png(imgs, result["labels"], str(path))
            client.log_artifact(run_id, str(path), "eval")
