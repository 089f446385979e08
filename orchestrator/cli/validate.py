"""`afsweep validate`: check a spec without running anything."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.spec import load_spec


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a spec field, as for launch.")
def validate(spec_path: Path, sets: tuple[str, ...]):
    """Check SPEC (schema, method keys, presets) without running anything."""
    spec = load_spec(spec_path, list(sets))
    click.echo(f"{spec_path}: ok: sweep '{spec.name}', {spec.search.num_trials} trials over "
               f"{len(spec.search.space)} parameters ({', '.join(spec.search.space) or 'none'})")

