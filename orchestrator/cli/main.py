"""The `afsweep` group: its commands, and every expected failure as one line on stderr with an exit code (2 for
bad input, 1 for the rest; a bug keeps its traceback)."""

from __future__ import annotations

import importlib
import os
import sys

import click

from alphaflow.errors import ExpectedError, InputError
from orchestrator.platform.command_line import ARGV_META

# name -> (module:function, one-line help). A command's module is imported only when that command runs: importing
# them all costs ~12 s (Ray, MLflow and torch; `import orchestrator.sweep.driver` measured 12-16 s on 2 cores,
# `import orchestrator.spec` 0.5 s), which `afsweep --help` and `afsweep validate` would pay every time.
# tests/cli/test_cli_details.py checks that each help line is the command's own.
COMMANDS = {
    "launch": ("orchestrator.cli.launch:launch", "Run the sweep described by SPEC (a YAML file)."),
    "validate": ("orchestrator.cli.validate:validate",
                 "Check SPEC (schema, method keys, presets) without running anything."),
    "preview": ("orchestrator.cli.preview:preview",
                "Show SPEC's planned trials, ASHA rungs and an estimate of cost; --png plots the sampled schedules."),
    "best": ("orchestrator.cli.results:best",
             "Print the best trial(s) by METRIC, or with --pareto the non-dominated trials, read from MLflow."),
    "status": ("orchestrator.cli.results:status",
               "Trials of SWEEP (default: the latest), their states, the best so far, and the cost."),
    "resume": ("orchestrator.cli.launch:resume",
               "Finish SWEEP after its driver died: no trial lost, none run twice, no duplicate MLflow run."),
    "data": ("orchestrator.cli.data:data", "Prepare and inspect training data (latent shards + Parquet manifest)."),
    "eval": ("orchestrator.cli.eval:eval_command",
             "FID-N (and class accuracy, precision/recall, KID) of a trial run or a registered model, logged to "
             "its run."),
    "sample-sweep": ("orchestrator.cli.sample_sweep:sample_sweep",
                     "Sweep sampling-time knobs of one trained generator: nested MLflow runs, a plot, optionally an "
                     "alias."),
}


def load_command(name: str) -> click.Command:
    module, function = COMMANDS[name][0].split(":")
    command = getattr(importlib.import_module(module), function)
    command.name = name
    return command


def _one_line(e: Exception) -> str:
    """An error message on one line whatever it quotes (a key or a value may hold a newline)."""
    # every character that could break the line (\n, \r, \x85, \u2028, ...) is written escaped
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(e))



class _Group(click.Group):
    """Loads a command when it runs; turns the project's own error types into one line and an exit code; keeps the
    command line as typed (the runs' `afsweep.command` tag)."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        return load_command(name) if name in COMMANDS else None

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_line) for name, (_, help_line) in COMMANDS.items()])

    def parse_args(self, ctx, args):
        ctx.meta[ARGV_META] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            code = exit_code(e)
            if code is None:
                raise
            click.echo(f"afsweep: error: {_one_line(e)}", err=True)
            sys.exit(code)


def exit_code(e: Exception) -> int | None:
    """2 for bad input, 1 for the other expected failures, None for a bug (its traceback is shown)."""
    if isinstance(e, InputError):
        return 2
    return 1 if isinstance(e, ExpectedError) else None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="afsweep")
def main():
    """afsweep: sweep alpha-Flow / MeanFlow training on Ray Tune + Optuna, tracked in MLflow."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in sweep output
