"""Small things a user of the CLI notices: numbers written as people write them, optional arguments shown as
optional, params in `best --json` as the numbers they were (issue 13)."""

from __future__ import annotations

from click.testing import CliRunner

from orchestrator.cli import _param_value, main
from orchestrator.spec import apply_sets, parse_spec, read_yaml


def test_exponent_numbers_are_numbers():
    assert read_yaml("a: 1.0e4\nb: 1e-3\nc: 2E+2\nd: 1.0e+6\ne: 1e4x\nf: '1e4'") == {
        "a": 1.0e4, "b": 1e-3, "c": 200.0, "d": 1.0e6, "e": "1e4x", "f": "1e4"}
    raw = read_yaml("name: x\nbase: {overrides: {optim.lr: 1.0e-4}}\n")
    assert parse_spec(raw).base.overrides["optim.lr"] == 1e-4
    assert apply_sets({"name": "x"}, ["search.num_trials=1e1"], "s")["search"]["num_trials"] == 10.0


def test_status_help_shows_sweep_as_optional():
    out = CliRunner().invoke(main, ["status", "--help"]).output
    assert "status [OPTIONS] [SWEEP]" in out, out


def test_best_json_params_are_numbers():
    assert _param_value("38.9711") == 38.9711 and _param_value("3") == 3
    assert _param_value("sigmoid") == "sigmoid" and _param_value("True") is True and _param_value(None) is None
