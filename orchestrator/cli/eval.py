"""`afsweep eval`: FID-N of a trial's checkpoint, or of a registered model, in a chosen feature space
(orchestrator.evaluate.run_eval does the work).

    afsweep eval RUN_ID --n 1000                                  # the data set's domain CNN, 1 and 2 NFE
    afsweep eval models:/afsweep-fashion-mnist@best-fid1 --extractor inception-v3-tf --n 500 --nfe 1
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch
from mlflow.exceptions import MlflowException

from alphaflow.errors import InputError, first_line
from alphaflow.metrics import MetricsError
from orchestrator import tracking
from orchestrator.cli.common import TRACKING_URI_OPTION
from orchestrator.evaluate.run_eval import EvalError, evaluate_run, log_results, resolve_run_id


def _fail(msg: str, code: int = 1):
    click.echo(f"afsweep: error: {msg}", err=True)
    sys.exit(code)


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
@TRACKING_URI_OPTION
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("afsweep-runs"),
              show_default=True, help="Where the MLflow store and cached reference statistics are.")
def eval_command(target, extractor, n, nfes, batch_size, seed, reference, reference_n, threads, no_log,
                 tracking_uri, run_dir):
    """FID-N (and class accuracy, precision/recall, KID) of a trial run or a registered model, logged to its run."""
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
