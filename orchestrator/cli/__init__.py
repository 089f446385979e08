"""The `afsweep` command line.

Every expected failure (a bad spec, unreachable MLflow or S3, a missing shard) is one line on stderr and a non-zero
exit code: 2 for bad input (spec, arguments), 1 for everything else. No tracebacks for those.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from alphaflow.errors import InputError
from orchestrator.spec import SpecError, load_spec
from orchestrator.tracking.provenance import ARGV_META

RUN_DIR_OPTION = click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("afsweep-runs"), show_default=True,
    help="Where the MLflow store, Ray results, Optuna study and prepared data go.",
)


def _one_line(e: Exception) -> str:
    """An error message on one line whatever it quotes (a key or a value may hold a newline)."""
    # every character that could break the line (\n, \r, \x85, \u2028, ...) is written escaped
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(e))


class _Group(click.Group):
    """Turns the project's own error types into one line and an exit code; keeps the command line as typed (the
    runs' `afsweep.command` tag)."""

    def parse_args(self, ctx, args):
        ctx.meta[ARGV_META] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            code = _exit_code(e)
            if code is None:
                raise
            click.echo(f"afsweep: error: {_one_line(e)}", err=True)
            sys.exit(code)


def _exit_code(e: Exception) -> int | None:
    """2 for bad input, 1 for the other expected failures, None for a bug (its traceback is shown)."""
    from alphaflow.config import ConfigError
    from alphaflow.data import DataError
    from alphaflow.errors import InputError
    from alphaflow.metrics.errors import MetricsError
    from orchestrator.sweep.driver import SweepError, SweepInputError
    from orchestrator.sweep.places import PlaceError
    from orchestrator.tracking import TrackingError

    if isinstance(e, (InputError, SpecError, ConfigError, SweepInputError, PlaceError)):
        return 2
    if isinstance(e, (SweepError, TrackingError, DataError, MetricsError)):
        return 1
    return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="afsweep")
def main():
    """afsweep: sweep alpha-Flow / MeanFlow training on Ray Tune + Optuna, tracked in MLflow."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in sweep output


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a spec field, e.g. --set search.num_trials=8 --set base.overrides.total_steps=500.")
@RUN_DIR_OPTION
@click.option("--address", default=None, help="Connect to an existing Ray cluster instead of starting one.")
def launch(spec_path: Path, sets: tuple[str, ...], run_dir: Path, address: str | None):
    """Run the sweep described by SPEC (a YAML file)."""
    from orchestrator.sweep.driver import launch as run_sweep

    spec = load_spec(spec_path, list(sets))
    outcome = run_sweep(spec, spec_path.read_text(), run_dir=run_dir, address=address, echo=click.echo)
    _print_outcome(outcome)


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec field, as for launch.")
def validate(spec_path: Path, sets: tuple[str, ...]):
    """Check SPEC (schema, method keys, presets) without running anything."""
    spec = load_spec(spec_path, list(sets))
    click.echo(f"{spec_path}: ok: sweep '{spec.name}', {spec.search.num_trials} trials over "
               f"{len(spec.search.space)} parameters ({', '.join(spec.search.space) or 'none'})")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec field, as for launch.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG of the sampled alpha / ratio_fm / beta schedules there (preview writes nothing "
                   "without it).")
@click.option("--no-timing", is_flag=True, help="Skip the timed training steps of the cost estimate.")
def preview(spec_path: Path, sets: tuple[str, ...], png_path: Path | None, no_timing: bool):
    """Show SPEC's planned trials, ASHA rungs and an estimate of cost; --png plots the sampled schedules."""
    from orchestrator.sweep.preview import estimate_cost, plan_trials, schedules_png

    spec = load_spec(spec_path, list(sets))
    plan = plan_trials(spec)
    keys = list(dict.fromkeys(k for t in plan.trials for k in t))
    click.echo(f"sweep '{spec.name}': {len(plan.trials)} trials x {spec.train.workers} workers, "
               f"{spec.search.algorithm} (seed {spec.search.seed}), at most {spec.search.max_concurrent} at once")
    click.echo(f"{'trial':>5}  " + "  ".join(f"{k:>14}" for k in keys) + f"  {'steps':>7}")
    for i, (t, c) in enumerate(zip(plan.trials, plan.configs)):
        cells = "  ".join(f"{_cell(t.get(k)):>14}" for k in keys)
        click.echo(f"{i:>5}  {cells}  {c.total_steps:>7}")
    if plan.rungs:
        click.echo(f"ASHA rungs at steps {', '.join(map(str, plan.rungs))} (grace period {plan.grace}: "
                   f"no trial is judged before its alpha transition ends)")
    else:
        click.echo("early stopping: none (every trial runs to its last step)")
    if not no_timing:
        shape, classes = _data_shape(spec)
        cost = estimate_cost(spec, plan, shape, classes)
        click.echo(f"cost estimate: ~{cost['wall_s'] / 60:.1f} min wall, {cost['cpu_s'] / 3600:.2f} CPU-h"
                   + (f", {cost['gpu_s'] / 3600:.2f} GPU-h" if cost["gpu_s"] else "")
                   + f" ({cost['trial_steps']} trial-steps at {cost['step_s'] * 1000:.0f} ms/step and evaluations "
                   f"of {cost['eval_s']:.1f} s measured here, x{cost['share']:.1f} for trials sharing the cores, "
                   f"start-up; every trial to its last step: ASHA can only shorten it)")
    if png_path is not None:
        click.echo(f"schedules plot: {schedules_png(plan, png_path)}")


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _data_shape(spec) -> tuple[tuple[int, ...], int]:
    """The training data's latent shape and class count, without preparing anything."""
    if spec.data.manifest:
        from alphaflow.data import read_manifest

        m = read_manifest(spec.data.manifest)
        return tuple(m.image_shape), m.num_classes
    return {"fashion-mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10)}[spec.data.dataset]


def _print_outcome(outcome) -> None:
    click.echo("")
    click.echo(f"sweep {outcome.sweep_name}: {outcome.trials} trials: {outcome.completed} completed, "
               f"{outcome.pruned} stopped early by ASHA, {outcome.failed} failed  ({outcome.wall_s:.0f} s)")
    for f in outcome.failures:
        click.echo(f"  failed: {f}")
    if outcome.best:
        b = outcome.best
        click.echo(f"best trial: {b.run_name} (run {b.run_id}): {b.metric} = {b.value:.3f} at step {b.step}")
        if outcome.untrained_fid1 is not None:
            click.echo(f"untrained model: fid1 = {outcome.untrained_fid1:.3f}")
        for k in _swept(b):
            click.echo(f"  {k} = {b.params.get(k)}")
        for p in outcome.promotions:
            if p.moved:
                click.echo(f"registered: {p.uri} (version {p.version}: {p.reason})")
            else:
                click.echo(f"registered: {p.uri}; @{p.alias} kept: {p.reason} (move it yourself: afsweep best "
                           f"--sweep {outcome.sweep_name} --metric {p.alias.split('-', 1)[1]} --register {p.alias})")
    if outcome.objectives:
        click.echo(f"Pareto front on {', '.join(outcome.objectives)}: {len(outcome.pareto)} trials "
                   f"(pareto.png on the parent run; afsweep best --sweep {outcome.sweep_name} --pareto)")
        for p in outcome.pareto:
            click.echo(f"  #{p.pick} {p.run_name}: " + ", ".join(f"{k} = {v:.3f}" for k, v in p.values.items()))
    click.echo(f"MLflow UI: mlflow ui --backend-store-uri {outcome.tracking_uri}")
    if outcome.completed == 0:
        click.echo(f"afsweep: error: sweep {outcome.sweep_name}: no trial completed ({outcome.failed} failed); "
                   f"nothing registered, no alias moved", err=True)
        sys.exit(1)
    if outcome.best is None:
        click.echo(f"afsweep: error: sweep {outcome.sweep_name}: no trained trial scored {outcome.metric}; nothing "
                   f"registered", err=True)
        sys.exit(1)


@main.command()
@click.option("--metric", type=click.Choice(["fid1", "fid2"]), default="fid1", show_default=True)
@click.option("--sweep", default=None, help="A sweep name; default: the latest sweep. 'all' for every sweep.")
@click.option("--top", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--experiment", default="afsweep", show_default=True)
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI or the run dir's.")
@click.option("--register", "alias", default=None, help="Point this registry alias at the best trial's model.")
@click.option("--model-name", default=None, help="Registered model name for --register (default afsweep-<dataset>).")
@click.option("--pareto", is_flag=True, help="The non-dominated trials on the sweep's objectives (search.objectives).")
@click.option("--objectives", default=None, metavar="M[:MODE],M[:MODE]",
              help="With --pareto: these objectives instead of the sweep's, e.g. fid1,wall_s.")
@click.option("--pick", type=int, default=None, help="With --pareto --register: the front point (#N) to alias.")
@RUN_DIR_OPTION
def best(metric, sweep, top, as_json, experiment, tracking_uri, alias, model_name, pareto, objectives, pick,
         run_dir):
    """Print the best trial(s) by METRIC, or with --pareto the non-dominated trials, read from MLflow."""
    from orchestrator import tracking

    if not pareto and (objectives or pick is not None):
        raise BadArgument(f"{'--objectives' if objectives else '--pick'} goes with --pareto")
    client, uri, exp = _open_experiment(tracking_uri, run_dir, experiment)
    if sweep is None:
        sweep = tracking.latest_sweep(client, exp.experiment_id)
    elif sweep != "all" and tracking.find_sweep_run(client, exp.experiment_id, sweep) is None:
        raise _no_sweep(client, uri, exp, sweep)
    if pareto:
        return _best_pareto(client, uri, exp, sweep, objectives, alias, pick, model_name, as_json)
    rows = tracking.best_trials(client, exp.experiment_id, metric, None if sweep == "all" else sweep, top=top)
    if not rows:
        raise tracking.TrackingError(f"MLflow at {uri}: no trial of sweep '{sweep}' has logged {metric}_best")
    if alias:
        b = rows[0]
        name = model_name or _registered_model_of(client, b.run_id)
        rows[0].model_uri = tracking.register_generator(client, uri, b.run_id, name, [alias])
    if as_json:
        click.echo(json.dumps([_best_dict(r) for r in rows], indent=2))
        return
    for i, r in enumerate(rows, 1):
        click.echo(f"#{i} sweep {r.sweep}  trial {r.run_name}  run {r.run_id}")
        click.echo(f"   {r.metric} = {r.value:.4f}  (step {r.step})")
        for k in _swept(r):
            click.echo(f"   {k} = {r.params.get(k)}")
        click.echo(f"   model: {r.model_uri or '(not registered)'}")


class BadArgument(ValueError, InputError):
    """A command-line argument that cannot be used (exit 2, one line)."""


def _sweep_objectives(client, exp, sweep: str, given: str | None) -> dict[str, str]:
    """--objectives, else the ones the sweep searched (its parent run's `objectives` param)."""
    from orchestrator.objectives import parse_objectives
    from orchestrator import tracking

    if given:
        try:
            return parse_objectives(given)
        except ValueError as e:
            raise BadArgument(str(e)) from None
    if sweep == "all":
        raise BadArgument("--pareto --sweep all: name the objectives with --objectives (sweeps may differ)")
    parent = client.get_run(tracking.find_sweep_run(client, exp.experiment_id, sweep))
    recorded = parent.data.params.get("objectives", "")
    if "," not in recorded:
        raise BadArgument(f"sweep '{sweep}' searched one objective ({recorded.split(':')[0] or 'fid1'}): --pareto "
                          f"needs search.objectives in its spec, or --objectives fid1,wall_s")
    return parse_objectives(recorded, f"sweep '{sweep}'")


def _best_pareto(client, uri, exp, sweep, objectives, alias, pick, model_name, as_json) -> None:
    from orchestrator import tracking
    from orchestrator.sweep.pareto import point_dict, sweep_points

    if sweep is None:
        raise tracking.NotFoundError(f"MLflow at {uri}: no sweep has run in experiment '{exp.name}'")
    chosen = _sweep_objectives(client, exp, sweep, objectives)
    points, front = sweep_points(client, exp.experiment_id, None if sweep == "all" else sweep, chosen)
    if not front:
        raise tracking.TrackingError(f"MLflow at {uri}: no trained trial of sweep '{sweep}' has logged "
                                     f"{', '.join(chosen)}")
    if alias:
        if pick is None and len(front) > 1:
            raise BadArgument(f"--register with --pareto: choose a point with --pick N (1..{len(front)})")
        if not 1 <= (pick or 1) <= len(front):
            raise BadArgument(f"--pick {pick}: the front has points 1..{len(front)}")
        p = front[(pick or 1) - 1]
        name = model_name or _registered_model_of(client, p.run_id)
        p.model_uri = tracking.register_generator(client, uri, p.run_id, name, [alias])
    elif pick is not None:
        raise BadArgument("--pick chooses the point to --register")
    if as_json:
        click.echo(json.dumps([point_dict(p) for p in front], indent=2))
        return
    click.echo(f"sweep {sweep}: Pareto front on {', '.join(f'{m} ({mode})' for m, mode in chosen.items())}: "
               f"{len(front)} of {len(points)} trials")
    for p in front:
        d = point_dict(p)
        click.echo(f"#{p.pick} trial {p.run_name}  run {p.run_id}")
        click.echo("   " + "  ".join(f"{k} = {v:.4f}" for k, v in d["objectives"].items()))
        for k, v in d["params"].items():
            click.echo(f"   {k} = {v}")
        click.echo(f"   model: {p.model_uri or '(not registered)'}")


@main.command()
@click.argument("sweep_name", metavar="SWEEP")
@RUN_DIR_OPTION
@click.option("--address", default=None, help="Connect to an existing Ray cluster instead of starting one.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; default: the spec's, then the run dir's.")
@click.option("--storage", default=None,
              help="The sweep's run.storage (where its state and frozen spec are); default: <run-dir>/ray.")
@click.option("--optuna-storage", default=None, help="The Optuna study's database; default: the spec's search.storage.")
def resume(sweep_name, run_dir, address, tracking_uri, storage, optuna_storage):
    """Finish SWEEP after its driver died: no trial lost, none run twice, no duplicate MLflow run."""
    from orchestrator.sweep.driver import resume as resume_sweep

    outcome = resume_sweep(sweep_name, run_dir=run_dir, address=address, echo=click.echo, tracking_uri=tracking_uri,
                           storage=storage, optuna_storage=optuna_storage)
    _print_outcome(outcome)


@main.command()
@click.argument("sweep_name", metavar="[SWEEP]", required=False)
@click.option("--experiment", default="afsweep", show_default=True)
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI or the run dir's.")
@click.option("--json", "as_json", is_flag=True)
@RUN_DIR_OPTION
def status(sweep_name, experiment, tracking_uri, as_json, run_dir):
    """Trials of SWEEP (default: the latest), their states, the best so far, and the cost."""
    from orchestrator import tracking

    client, uri, exp = _open_experiment(tracking_uri, run_dir, experiment)
    sweep_name = sweep_name or tracking.latest_sweep(client, exp.experiment_id)
    rows = tracking.sweep_status(client, exp.experiment_id, sweep_name)
    if rows is None:
        raise _no_sweep(client, uri, exp, sweep_name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"sweep {sweep_name}: {rows['state']}, {len(rows['trials'])} trials "
               f"({', '.join(f'{v} {k}' for k, v in rows['counts'].items())})")
    if rows["state"] == "INTERRUPTED":
        click.echo(f"its driver stopped without finishing it: afsweep resume {sweep_name} (same --run-dir and URLs)")
    click.echo(f"{'trial':<28} {'state':<10} {'step':>6} {'fid1':>9} {'fid1_best':>9} {'wall_s':>8} {'cpu_s':>8}")
    for t in rows["trials"]:
        click.echo(f"{t['name']:<28} {t['state']:<10} {_fmt(t['step'], 0):>6} {_fmt(t['fid1']):>9} "
                   f"{_fmt(t['fid1_best']):>9} {_fmt(t['wall_s'], 0):>8} {_fmt(t['cpu_s'], 0):>8}")
    if rows["best"]:
        click.echo(f"best so far: {rows['best']['name']} fid1_best = {rows['best']['fid1_best']:.3f}")
    click.echo(f"cost: {rows['total_wall_s']:.0f} trial-wall-seconds, {rows['total_cpu_s']:.0f} CPU-seconds, "
               f"{rows['total_gpu_s']:.0f} GPU-seconds")


def _open_experiment(tracking_uri, run_dir, experiment):
    """(client, uri, experiment) of a store that exists: the read-only commands create nothing."""
    from orchestrator import tracking
    from orchestrator.sweep.places import hide_secret

    uri = tracking.resolve_tracking_uri(tracking_uri, run_dir)
    client = tracking.client_for(uri, existing=True)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise tracking.NotFoundError(f"MLflow at {hide_secret(uri)}: no experiment named '{experiment}' "
                                     f"(run afsweep launch first)")
    return client, uri, exp


def _no_sweep(client, uri, exp, sweep):
    """The one-line error for a sweep name the experiment does not hold, with the sweeps it does."""
    from orchestrator import tracking
    from orchestrator.sweep.places import hide_secret

    known = tracking.sweep_names(client, exp.experiment_id)
    return tracking.NotFoundError(f"MLflow at {hide_secret(uri)}, experiment '{exp.name}': no sweep named "
                                  f"'{sweep}'" + (f" (sweeps: {', '.join(known)})" if known else
                                                  " (no sweep has run there)"))


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _swept(r) -> list[str]:
    return [k for k in r.params.get("swept", "").split(",") if k]


def _best_dict(r) -> dict:
    from orchestrator.tracking import param_value

    return {"run_id": r.run_id, "run_name": r.run_name, "sweep": r.sweep, "metric": r.metric, "value": r.value,
            "step": r.step, "params": {k: param_value(r.params.get(k)) for k in _swept(r)},
            "model_uri": r.model_uri}


def _registered_model_of(client, run_id: str) -> str:
    """The registry name the trial's sweep uses (recorded on the parent run at launch)."""
    from orchestrator import tracking

    parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    params = client.get_run(parent).data.params if parent else {}
    if params.get("registered_model"):
        return params["registered_model"]
    return tracking.default_model_name(params.get("dataset", "model"))


def _add_optional_commands() -> None:
    """Sub-command groups that live in their own modules."""
    from orchestrator.cli.data import data

    main.add_command(data)
    try:
        from orchestrator.cli.eval import eval_command
    except ImportError:
        return
    main.add_command(eval_command, name="eval")
    from orchestrator.cli.sample_sweep import sample_sweep

    main.add_command(sample_sweep)


_add_optional_commands()


if __name__ == "__main__":
    main()
