"""`afsweep eval`: FID-N of a trial's checkpoint, or of a registered model, in a chosen feature space.

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
import sys
import tempfile
import time
from pathlib import Path

import click

from alphaflow.errors import InputError, first_line
from orchestrator.trial.config import DOMAIN_EXTRACTOR
from orchestrator.tracking import CHECKPOINT_ARTIFACT


class EvalError(RuntimeError):
    """A one-line failure of `afsweep eval`."""


class EvalInputError(EvalError, InputError):
    """A target or option of `afsweep eval` that names nothing usable (exit 2)."""


def _fail(msg: str, code: int = 1):
    click.echo(f"afsweep: error: {msg}", err=True)
    sys.exit(code)


def resolve_run_id(client, target: str) -> str:
    """A run id, or the run behind models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID (a logged model)."""
    from mlflow.exceptions import MlflowException

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
    from mlflow.exceptions import MlflowException

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
    from alphaflow.data import read_manifest

    try:
        return read_manifest(manifest).fid_reference
    except Exception:  # the data may have moved since the sweep; the caller falls back to the built-in data
        return None


def reference_for(extractor, dataset_id: str, explicit: Path | None, client, run_id: str, run_dir: Path,
                  reference_n: int, echo):
    """Reference statistics compatible with the extractor and the data set (see the module docstring)."""
    from alphaflow.metrics import IncompatibleReferenceError, ReferenceStats, compute_reference_stats

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
    from alphaflow.data.sources import BUILTIN_DATASETS, load_builtin

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
    import torch

    from alphaflow.checkpoint import load_generator
    from alphaflow.evaluation import LatentDecoder, score_sampler
    from alphaflow.metrics import load_extractor
    from alphaflow.sampling import sample
    from alphaflow.train_state import EVAL_NOISE_SEED

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
    from alphaflow.config import config_from_dict
    from alphaflow.train_state import sampling_guidance

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
                metrics[f"{key}{nfe}_{extractor.id}_n{n}"] = float(value)
    return {"metrics": metrics, "step": info["step"], "extractor": extractor, "reference": ref_path,
            "images": images, "labels": labels, "timings": timings, "dataset_id": dataset_id}


def log_results(client, run_id: str, result: dict, n: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, int(result["step"])) for k, v in result["metrics"].items() if math.isfinite(v)]
    client.log_batch(run_id, metrics=batch)
    from alphaflow.metrics import sample_grid_png

    with tempfile.TemporaryDirectory() as tmp:
        for nfe, imgs in result["images"].items():
            path = Path(tmp) / f"eval_nfe{nfe}_{result['extractor'].id}_n{n}.png"
            sample_grid_png(imgs, result["labels"], str(path))
            client.log_artifact(run_id, str(path), "eval")


@click.command("eval")
@click.argument("target", metavar="RUN_ID|MODEL_URI")
@click.option("--extractor", default=None,
              help="Feature extractor: fashion-mnist-cnn, digits-cnn, inception-v3-tf[:PATH], dinov2:PATH. "
                   "Default: the data set's domain CNN.")
@click.option("--n", "n", type=click.IntRange(2, 1_000_000), default=1000, show_default=True,
              help="Generated samples per NFE (FID is biased upward at small N: compare equal N only).")
@click.option("--nfe", "nfes", type=click.Choice(["1", "2"]), multiple=True, default=("1", "2"), show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=500, show_default=True,
              help="Samples per network call; 500 = the training evaluation's (2-NFE consistency depends on it).")
@click.option("--seed", type=int, default=1234, show_default=True, help="Noise seed; 1234 = the training evaluation's.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Reference statistics (.npz, also plain pytorch-fid files).")
@click.option("--reference-n", type=click.IntRange(2, 1_000_000), default=10000, show_default=True,
              help="Test images behind reference statistics computed here.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--no-log", is_flag=True, help="Print only; log nothing to MLflow.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI or the run dir's.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("afsweep-runs"),
              show_default=True, help="Where the MLflow store and cached reference statistics are.")
def eval_command(target, extractor, n, nfes, batch_size, seed, reference, reference_n, threads, no_log,
                 tracking_uri, run_dir):
    """FID-N (and class accuracy, precision/recall, KID) of a trial run or a registered model, logged to its run."""
    import torch
    from mlflow.exceptions import MlflowException

    from alphaflow.metrics import MetricsError
    from orchestrator import tracking

    torch.set_num_threads(threads)
    nfe_list = tuple(sorted({int(v) for v in nfes}))
    try:
        uri = tracking.resolve_tracking_uri(tracking_uri, run_dir)
        client = tracking.client_for(uri, existing=True)
        run_id = resolve_run_id(client, target)
        result = evaluate_run(client, run_id, extractor, n, nfe_list, batch_size, seed, reference, run_dir,
                              reference_n, lambda m: click.echo(m, err=True))
        if not no_log:
            log_results(client, run_id, result, n)
    except (EvalError, MetricsError) as e:
        _fail(str(e), 2 if isinstance(e, InputError) else 1)
    except MlflowException as e:
        _fail(f"MLflow at {tracking_uri or run_dir}: {first_line(e, 200)}")

    ext = result["extractor"]
    click.echo(f"run {run_id}  step {result['step']}  data {result['dataset_id']}  extractor {ext.describe()}")
    click.echo(f"reference: {result['reference']}")
    click.echo(f"{'metric':<40} {'value':>10}")
    for k, v in result["metrics"].items():
        click.echo(f"{k:<40} {v:>10.4f}")
    for nfe, t_total in result["timings"].items():
        click.echo(f"nfe {nfe}: sampling, features and scores {t_total:.1f} s")
    click.echo("(not logged)" if no_log else f"logged to run {run_id}")
