"""`afsweep best` and `afsweep status`: what a sweep found and where it stands, read from MLflow (these commands
create nothing)."""

from __future__ import annotations

import json

import click

from orchestrator import tracking
from orchestrator.cli.common import RUN_DIR_OPTION, TRACKING_URI_OPTION, BadArgument, fmt, swept_keys
from orchestrator.platform.places import hide_secret
from orchestrator.spec.objectives import parse_objectives
from orchestrator.sweep.comparison import gain_over_base
from orchestrator.sweep.pareto import point_dict, sweep_points


@click.command()
@click.option("--metric", type=click.Choice(["fid1", "fid2"]), default="fid1", show_default=True)
@click.option("--sweep", default=None, help="A sweep name; default: the latest sweep. 'all' for every sweep.")
@click.option("--top", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--experiment", default="afsweep", show_default=True)
@TRACKING_URI_OPTION
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
    if not pareto and (objectives or pick is not None):
        raise BadArgument(f"{'--objectives' if objectives else '--pick'} goes with --pareto")
    client, uri, exp = _open_experiment(tracking_uri, run_dir, experiment)
    if sweep is None:
        sweep = tracking.latest_sweep(client, exp.experiment_id)
    elif sweep != "all" and tracking.find_sweep_run(client, exp.experiment_id, sweep) is None:
        raise _no_sweep(client, uri, exp, sweep)
    if pareto:
        return _best_pareto(client, uri, exp, sweep, objectives, alias, pick, model_name, as_json)
    confirmed = _confirmed(client, exp, sweep, metric)
    if confirmed is not None and not alias:
        return _print_confirmed(confirmed, sweep, top, as_json)
    rows = tracking.best_trials(client, exp.experiment_id, metric, None if sweep == "all" else sweep, top=top)
    if not rows:
        raise tracking.TrackingError(f"MLflow at {uri}: no trial of sweep '{sweep}' has logged {metric}_best")
    if alias:
        b = rows[0]
        name = model_name or tracking.registered_model_of(client, b.run_id)
        rows[0].model_uri = tracking.register_generator(client, uri, b.run_id, name, [alias])
    base = None if sweep == "all" else tracking.base_trial(client, exp.experiment_id, sweep, metric)
    gains = [gain_over_base(r.metric, r.value, r.se, base.value, base.se, same_trial=r.run_id == base.run_id)
             if base else None for r in rows]
    if as_json:
        click.echo(json.dumps([_best_dict(r, g, base) for r, g in zip(rows, gains)], indent=2))
        return
    for i, (r, gain) in enumerate(zip(rows, gains), 1):
        role = "  (the base setting)" if r.role == "base" else ""
        click.echo(f"#{i} sweep {r.sweep}  trial {r.run_name}  run {r.run_id}{role}")
        se = f" +- {r.se:.4f} (SE of the evaluation)" if r.se is not None else ""
        click.echo(f"   {r.metric} = {r.value:.4f}{se}  (step {r.step})")
        for k in swept_keys(r):
            click.echo(f"   {k} = {r.params.get(k)}")
        if gain is not None and r.role != "base":
            click.echo(f"   vs base {base.run_name}: {gain.line()}")
        click.echo(f"   model: {r.model_uri or '(not registered)'}")



def _confirmed(client, exp, sweep: str, metric: str) -> dict | None:
    """The sweep's confirmation (confirmation.json on its parent run) when it confirmed `metric`, else None."""
    if sweep in (None, "all"):
        return None
    parent = tracking.find_sweep_run(client, exp.experiment_id, sweep)
    summary = tracking.read_json_artifact(client, parent, tracking.CONFIRMATION_ARTIFACT) if parent else None
    return summary if summary and summary.get("metric") == metric else None


def _print_confirmed(summary: dict, sweep: str, top: int, as_json: bool) -> None:
    """A confirmed sweep's configurations by their confirmed mean (the base setting last), with interval, n and
    the paired gain over the base."""
    configs = [c for c in summary["configurations"] if c["mean"] is not None]
    ranked = [c for c in configs if c["of"] != "base"][:top]
    base = [c for c in configs if c["of"] == "base"]
    if as_json:
        click.echo(json.dumps([{**c, "metric": f"{summary['metric']}_rescored", "winner": c["of"] ==
                                summary["winner"], "sweep": sweep} for c in ranked + base], indent=2))
        return
    click.echo(f"sweep {sweep}: confirmed on {len(summary['seeds'])} fresh seeds each (paired), {summary['metric']} "
               f"re-scored on fresh noise; mean +- 95% interval (n)")
    for i, c in enumerate(ranked + base, 1):
        win = "  <- winner" if c["of"] == summary["winner"] else ""
        label = "base setting" if c["of"] == "base" else f"#{i} trial {c['name']}"
        click.echo(f"{label}: {summary['metric']} = {c['mean']:.3f} +- {c['half']:.3f} (n={c['n']}){win}")
        if c["gain"] is not None:
            click.echo(f"   gain over the base setting: {c['gain']:.3f} +- {c['gain_half']:.3f} (paired by seed)")
        for k, v in c["params"].items():
            click.echo(f"   {k} = {v}")


def _sweep_objectives(client, exp, sweep: str, given: str | None) -> dict[str, str]:
    """--objectives, else the ones the sweep searched (its parent run's `objectives` param)."""
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
        name = model_name or tracking.registered_model_of(client, p.run_id)
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



@click.command()
@click.argument("sweep_name", metavar="[SWEEP]", required=False)
@click.option("--experiment", default="afsweep", show_default=True)
@TRACKING_URI_OPTION
@click.option("--json", "as_json", is_flag=True)
@RUN_DIR_OPTION
def status(sweep_name, experiment, tracking_uri, as_json, run_dir):
    """Trials of SWEEP (default: the latest), their states, the best so far, and the cost."""
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
    if rows["confirmation"]:
        c = rows["confirmation"]
        click.echo(f"stage: {rows['stage']}; confirmation runs: {c['completed']} of {c['total']} completed, "
                   f"{c['started']} started")
    if rows["state"] == "INTERRUPTED":
        click.echo(f"its driver stopped without finishing it: afsweep resume {sweep_name} (same --run-dir and URLs)")
    click.echo(f"{'trial':<28} {'state':<10} {'step':>6} {'fid1':>9} {'fid1_best':>9} {'wall_s':>8} {'cpu_s':>8}")
    for t in rows["trials"]:
        name = t["name"] + (" (base)" if t["role"] == "base" else "")
        click.echo(f"{name:<28} {t['state']:<10} {fmt(t['step'], 0):>6} {fmt(t['fid1']):>9} "
                   f"{fmt(t['fid1_best']):>9} {fmt(t['wall_s'], 0):>8} {fmt(t['cpu_s'], 0):>8}")
    if rows["best"]:
        click.echo(f"best so far: {rows['best']['name']} fid1_best = {rows['best']['fid1_best']:.3f}")
    click.echo(f"cost: {rows['total_wall_s']:.0f} trial-wall-seconds, {rows['total_cpu_s']:.0f} CPU-seconds, "
               f"{rows['total_gpu_s']:.0f} GPU-seconds")



def _open_experiment(tracking_uri, run_dir, experiment):
    """(client, uri, experiment) of a store that exists: the read-only commands create nothing."""
    uri = tracking.resolve_tracking_uri(tracking_uri, run_dir)
    client = tracking.client_for(uri, existing=True)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise tracking.NotFoundError(f"MLflow at {hide_secret(uri)}: no experiment named '{experiment}' "
                                     f"(run afsweep launch first)")
    return client, uri, exp


def _no_sweep(client, uri, exp, sweep):
    """The one-line error for a sweep name the experiment does not hold, with the sweeps it does."""
    known = tracking.sweep_names(client, exp.experiment_id)
    return tracking.NotFoundError(f"MLflow at {hide_secret(uri)}, experiment '{exp.name}': no sweep named "
                                  f"'{sweep}'" + (f" (sweeps: {', '.join(known)})" if known else
                                                  " (no sweep has run there)"))



def _best_dict(r, gain=None, base=None) -> dict:
    out = {"run_id": r.run_id, "run_name": r.run_name, "sweep": r.sweep, "metric": r.metric, "value": r.value,
           "se": r.se, "step": r.step, "role": r.role,
           "params": {k: tracking.param_value(r.params.get(k)) for k in swept_keys(r)}, "model_uri": r.model_uri}
    if gain is not None:
        out.update(base_run_id=base.run_id, base_value=base.value, base_se=base.se, gain_over_base=gain.value,
                   gain_over_base_se=gain.se)
    return out

