"""`afsweep launch` and `afsweep resume`: run a sweep, or finish one whose driver died, and print its outcome."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestrator.cli.common import RUN_DIR_OPTION, swept_keys
from orchestrator.spec import load_spec
from orchestrator.sweep.driver import launch as run_sweep
from orchestrator.sweep.driver import resume as resume_sweep


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a spec field, e.g. --set search.num_trials=8 --set base.overrides.total_steps=500.")
@RUN_DIR_OPTION
@click.option("--address", default=None, help="Connect to an existing Ray cluster instead of starting one.")
def launch(spec_path: Path, sets: tuple[str, ...], run_dir: Path, address: str | None):
    """Run the sweep described by SPEC (a YAML file)."""
    spec = load_spec(spec_path, list(sets))
    outcome = run_sweep(spec, spec_path.read_text(), run_dir=run_dir, address=address, echo=click.echo)
    print_outcome(outcome)



@click.command()
@click.argument("sweep_name", metavar="SWEEP")
@RUN_DIR_OPTION
@click.option("--address", default=None, help="Connect to an existing Ray cluster instead of starting one.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI; default: the spec's, then the run dir's.")
@click.option("--storage", default=None,
              help="The sweep's run.storage (where its state and frozen spec are); default: <run-dir>/ray.")
@click.option("--optuna-storage", default=None, help="The Optuna study's database; default: the spec's search.storage.")
def resume(sweep_name, run_dir, address, tracking_uri, storage, optuna_storage):
    """Finish SWEEP after its driver died: no trial lost, none run twice, no duplicate MLflow run."""
    outcome = resume_sweep(sweep_name, run_dir=run_dir, address=address, echo=click.echo, tracking_uri=tracking_uri,
                           storage=storage, optuna_storage=optuna_storage)
    print_outcome(outcome)



def print_outcome(outcome) -> None:
    click.echo("")
    click.echo(f"sweep {outcome.sweep_name}: {outcome.trials} trials: {outcome.completed} completed, "
               f"{outcome.pruned} stopped early by ASHA, {outcome.failed} failed  ({outcome.wall_s:.0f} s)")
    for f in outcome.failures:
        click.echo(f"  failed: {f}")
    if outcome.best:
        b = outcome.best
        click.echo(f"best trial: {b.run_name} (run {b.run_id}): {b.metric} = {_with_se(b)} at step {b.step}")
        if outcome.base is not None:
            click.echo(f"base setting: {outcome.base.run_name} (run {outcome.base.run_id}): "
                       f"{outcome.base.metric} = {_with_se(outcome.base)} at step {outcome.base.step}")
            click.echo(f"gain over the base setting: {outcome.gain.line()}")
        if outcome.untrained_fid1 is not None:
            click.echo(f"untrained model: fid1 = {outcome.untrained_fid1:.3f}")
        for k in swept_keys(b):
            click.echo(f"  {k} = {b.params.get(k)}")
        for p in outcome.promotions:
            if p.moved:
                click.echo(f"registered: {p.uri} (version {p.version}: {p.reason})")
            else:
                click.echo(f"registered: {p.uri}; @{p.alias} kept: {p.reason} (move it yourself: afsweep best "
                           f"--sweep {outcome.sweep_name} --metric {p.alias.split('-', 1)[1]} --register {p.alias})")
    if outcome.confirmation is not None:
        _print_confirmation(outcome.confirmation, outcome.sweep_name)
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


def _with_se(trial) -> str:
    """`148.743 +- 2.104 (SE)`: a score with its evaluation's standard error, when it has one."""
    return f"{trial.value:.3f}" + (f" +- {trial.se:.3f} (SE)" if trial.se is not None else "")


def _print_confirmation(c, sweep_name: str) -> None:
    """The confirmation stage's table: each configuration's mean and 95% interval over the same fresh seeds, its
    paired gain over the base setting, the winner and what happened to the alias."""
    click.echo(f"confirmation: {len(c.seeds)} fresh seeds each (paired), picked checkpoints re-scored on fresh noise "
               f"(N={c.eval_samples})" + (f"; {c.failed} run(s) failed" if c.failed else ""))
    for conf in c.confirmed:
        score = conf.interval.text(3) if conf.interval else f"{len(conf.scores)} seed(s) scored: no interval"
        gain = f"; gain over base {conf.gain.text(3)}" if conf.gain is not None else ""
        mark = " <- winner" if conf is c.winner else ""
        click.echo(f"  {conf.name:<34} {score}{gain}{mark}")
    if c.winner is None:
        click.echo("afsweep: no configuration has two or more confirmed seeds: nothing confirmed, nothing registered")
        return
    p = c.promotion
    if p.moved:
        click.echo(f"confirmed winner: {c.winner.name}: registered {p.uri} (version {p.version}: {p.reason})")
    else:
        click.echo(f"confirmed winner: {c.winner.name}: registered {p.uri}; @{p.alias} kept: {p.reason}")
