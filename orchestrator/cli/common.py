"""What the commands share: the run-dir option, the bad-argument error, how values print."""

from __future__ import annotations

from pathlib import Path

import click

from alphaflow.errors import InputError

RUN_DIR_OPTION = click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("afsweep-runs"), show_default=True,
    help="Where the MLflow store, Ray results, Optuna study and prepared data go.",
)


TRACKING_URI_OPTION = click.option("--tracking-uri", default=None,
                                   help="MLflow tracking URI; default: $MLFLOW_TRACKING_URI or the run dir's.")


class BadArgument(ValueError, InputError):
    """A command-line argument that cannot be used (exit 2, one line)."""


def fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def swept_keys(r) -> list[str]:
    """The searched parameters of a trial (its `swept` param)."""
    return [k for k in r.params.get("swept", "").split(",") if k]
