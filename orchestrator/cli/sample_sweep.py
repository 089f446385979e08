"""`afsweep sample-sweep`: sampling-time knobs of a trained trial or registered model, scored without retraining.

    afsweep sample-sweep RUN_ID --knob t_mid=0.3,0.5,0.7 --knob half_life=25,100
    afsweep sample-sweep models:/afsweep-fashion-mnist@best-fid1 --knob guidance=1:4 --optuna 12 \
        --register best-sampling
    afsweep sample-sweep RUN_ID --knob probe_steps=1,2,4,8 --metric fid_probe --ray local

The logic lives in orchestrator/evaluate/sampling_sweep.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import torch
from mlflow.exceptions import MlflowException

from alphaflow.errors import InputError, first_line
from alphaflow.metrics import MetricsError
from orchestrator import tracking
from orchestrator.evaluate.run_eval import EvalError
from orchestrator.evaluate.sampling_sweep import SamplingSweepError, parse_knob, sampling_sweep


@click.command("sample-sweep")
@click.argument("target", metavar="RUN_ID|MODEL_URI")
@click.option("--knob", "knobs", multiple=True, metavar="NAME=V1,V2|NAME=LOW:HIGH",
              help="A sampling knob and its values: guidance, guidance_t_min, guidance_t_max (guidance-conditioned "
                   "models), t_mid, two_nfe, half_life, probe_steps. Repeat for several; a grid takes every "
                   "combination.")
@click.option("--optuna", "optuna_trials", type=click.IntRange(0, 10_000), default=0,
              help="Draw this many points with Optuna TPE instead of the grid (LOW:HIGH ranges allowed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Optuna's seed.")
@click.option("--metric", default="fid1", show_default=True, help="fid1, fid2 or fid_probe: what picks the best.")
@click.option("--extractor", default=None, help="Feature extractor (default: the data set's domain CNN).")
@click.option("--n", "n", type=click.IntRange(2, 1_000_000), default=1000, show_default=True)
@click.option("--nfe", "nfes", type=click.Choice(["1", "2"]), multiple=True, default=("1", "2"), show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--eval-seed", type=int, default=1234, show_default=True, help="Noise seed (the training evaluation's).")
@click.option("--reference", type=click.Path(path_type=Path), default=None)
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|local",
              help="Score points as Ray tasks on this cluster (local: a local Ray).")
@click.option("--parallel", type=click.IntRange(1, 1024), default=2, show_default=True,
              help="Points in flight at once on Ray.")
@click.option("--register", "alias", default=None,
              help="Register the model with the best settings packaged (its default) and point this alias at it.")
@click.option("--model-name", default=None, help="Registered model name (default: the sweep's).")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--tracking-uri", default=None)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("afsweep-runs"),
              show_default=True)
def sample_sweep(target, knobs, optuna_trials, seed, metric, extractor, n, nfes, batch_size, eval_seed, reference,
                 ray_address, parallel, alias, model_name, threads, as_json, tracking_uri, run_dir):
    """Sweep sampling-time knobs of one trained generator: nested MLflow runs, a plot, optionally an alias."""
    torch.set_num_threads(threads)
    echo = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    try:
        parsed = [parse_knob(k) for k in knobs]
        uri = tracking.resolve_tracking_uri(tracking_uri, run_dir)
        client = tracking.client_for(uri, existing=True)
        result = sampling_sweep(client, uri, target, parsed, metric=metric, optuna_trials=optuna_trials, seed=seed,
                                extractor_id=extractor, n=n, nfes=tuple(sorted({int(v) for v in nfes})),
                                batch_size=batch_size, eval_seed=eval_seed, reference=reference, run_dir=run_dir,
                                ray_address=ray_address, parallel=parallel, register_alias=alias,
                                model_name=model_name, echo=echo)
    except (SamplingSweepError, EvalError, MetricsError) as e:
        click.echo(f"afsweep: error: {e}", err=True)
        sys.exit(2 if isinstance(e, InputError) else 1)
    except MlflowException as e:
        click.echo(f"afsweep: error: MLflow at {tracking_uri or run_dir}: {first_line(e, 200)}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"sweep_id": result.sweep_id, "trial_run_id": result.trial_run_id,
                               "metric": result.metric, "best": result.best.settings,
                               "best_metrics": result.best.metrics, "registered": result.registered,
                               "artifacts": result.plot_artifacts,
                               "points": [{"settings": p.settings, "metrics": p.metrics, "run_id": p.run_id}
                                          for p in result.points]}))
        return
    names = list(result.points[0].settings)
    metric_names = sorted({m for p in result.points for m in p.metrics})
    click.echo("")
    click.echo("  ".join(f"{k:>14}" for k in names + metric_names))
    for p in result.points:
        mark = "  <- best" if p is result.best else ""
        click.echo("  ".join(f"{str(p.settings[k]):>14}" for k in names) + "  " +
                   "  ".join(f"{p.metrics.get(m, float('nan')):>14.2f}" for m in metric_names) + mark)
    click.echo(f"best {result.metric}: {result.best.metrics[result.metric]:.2f} at "
               + ", ".join(f"{k}={v}" for k, v in result.best.settings.items()))
    click.echo(f"plot: {result.plot_artifacts[0]} (run {result.trial_run_id})")
    if result.registered:
        click.echo(f"registered: {result.registered} (samples with these settings by default)")
