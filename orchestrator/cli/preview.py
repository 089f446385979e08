"""`afsweep preview`: a spec's planned trials, ASHA rungs and cost estimate, and a plot of its schedules."""

from __future__ import annotations

from pathlib import Path

import click

from alphaflow.data import read_manifest
from orchestrator.spec import load_spec
from orchestrator.sweep.preview import estimate_cost, plan_trials, schedules_png


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec field, as for launch.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG of the sampled alpha / ratio_fm / beta schedules there (preview writes nothing "
                   "without it).")
@click.option("--no-timing", is_flag=True, help="Skip the timed training steps of the cost estimate.")
def preview(spec_path: Path, sets: tuple[str, ...], png_path: Path | None, no_timing: bool):
    """Show SPEC's planned trials, ASHA rungs and an estimate of cost; --png plots the sampled schedules."""
    spec = load_spec(spec_path, list(sets))
    plan = plan_trials(spec)
    keys = list(dict.fromkeys(k for t in plan.trials for k in t))
    click.echo(f"sweep '{spec.name}': {len(plan.trials)} trials x {spec.train.workers} workers, "
               f"{spec.search.algorithm} (seed {spec.search.seed}), at most {spec.search.max_concurrent} at once")
    click.echo(f"{'trial':>5}  " + "  ".join(f"{k:>14}" for k in keys) + f"  {'steps':>7}")
    for i, (t, c) in enumerate(zip(plan.trials, plan.configs)):
        cells = "  ".join(f"{_cell(t.get(k)):>14}" for k in keys)
        base = "  (the base setting)" if plan.base and i == 0 else ""
        click.echo(f"{i:>5}  {cells}  {c.total_steps:>7}{base}")
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
        m = read_manifest(spec.data.manifest)
        return tuple(m.image_shape), m.num_classes
    return {"fashion-mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10)}[spec.data.dataset]


