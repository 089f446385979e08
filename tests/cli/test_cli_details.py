"""Small things a user of the CLI notices: numbers written as people write them, optional arguments shown as
optional, params in `best --json` as the numbers they were, read-only commands that create nothing, exit code 2
for every bad input, a quick `--help` whose command list says what each command says of itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.spec import apply_sets, parse_spec, read_yaml
from orchestrator.tracking import param_value as _param_value

REPO = Path(__file__).resolve().parents[2]


def test_exponent_numbers_are_numbers():
    assert read_yaml("a: 1.0e4\nb: 1e-3\nc: 2E+2\nd: 1.0e+6\ne: 1e4x\nf: '1e4'") == {
        "a": 1.0e4, "b": 1e-3, "c": 200.0, "d": 1.0e6, "e": "1e4x", "f": "1e4"}
    raw = read_yaml("name: x\nbase: {overrides: {optim.lr: 1.0e-4}}\n")
    assert parse_spec(raw).base.overrides["optim.lr"] == 1e-4
    assert apply_sets({"name": "x"}, ["search.num_trials=1e1"], "s")["search"]["num_trials"] == 10.0


def test_status_help_shows_sweep_as_optional():
    out = CliRunner().invoke(main, ["status", "--help"]).output
    assert "status [OPTIONS] [SWEEP]" in out, out


def test_the_command_list_is_each_commands_own_help_and_loads_nothing_heavy():
    import subprocess
    import sys

    from orchestrator.cli.main import COMMANDS, load_command

    for name, (_, help_line) in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert help_line == (command.help or "").split("\n\n")[0].replace("\n", " ").strip(), name
    # the list comes from the table: `afsweep --help` imports neither Ray, MLflow nor torch
    probe = ("import sys; from click.testing import CliRunner; from orchestrator.cli import main; "
             "out = CliRunner().invoke(main, ['--help']).output; assert 'sample-sweep' in out, out; "
             "print(sorted(m for m in ('ray', 'mlflow', 'torch') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


def test_best_json_params_are_numbers():
    assert _param_value("38.9711") == 38.9711 and _param_value("3") == 3
    assert _param_value("sigmoid") == "sigmoid" and _param_value("True") is True and _param_value(None) is None


# --- read-only commands create nothing; bad input exits 2 ------------------------------------------------------


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_error_line(res, code: int = 2) -> str:
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("afsweep: error: "), res.output
    return lines[0]


def test_read_only_commands_on_a_missing_run_dir_create_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    missing = tmp_path / "no" / "such" / "dir"
    for args in (["status"], ["best"], ["best", "--sweep", "x"], ["eval", "0123abcd"]):
        t0 = time.perf_counter()
        line = _one_error_line(CliRunner().invoke(main, [*args, "--run-dir", str(missing)]))
        assert f"{missing}: no run dir there" in line and time.perf_counter() - t0 < 5, (args, line)
    assert not (tmp_path / "no").exists() and _files(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_error_line(CliRunner().invoke(main, ["status", "--run-dir", str(empty)]))
    assert f"{empty}: no MLflow store there" in line and _files(empty) == []


@pytest.fixture()
def one_sweep_store(tmp_path):
    """A run dir whose store holds one sweep ('s1') with one trial run."""
    from orchestrator import tracking

    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    client = tracking.client_for(tracking.default_tracking_uri(run_dir))
    exp_id = tracking.ensure_experiment(client, "afsweep", run_dir / tracking.RUN_DIR_ARTIFACTS)
    parent = tracking.start_sweep_run(client, exp_id, "s1", "name: s1\n", {})
    trial = tracking.get_or_create_trial_run(client, exp_id, parent, "s1", "t0", "trial-0", {"seed": 0})
    return run_dir, trial


def test_unknown_names_exit_2_with_one_line(one_sweep_store, tmp_path):
    run_dir, trial = one_sweep_store
    rd = ["--run-dir", str(run_dir)]
    line = _one_error_line(CliRunner().invoke(main, ["best", "--sweep", "nosuch", *rd]))
    assert "no sweep named 'nosuch'" in line and "(sweeps: s1)" in line
    assert "no sweep named 'nosuch'" in _one_error_line(CliRunner().invoke(main, ["status", "nosuch", *rd]))
    assert "no experiment named 'other'" in _one_error_line(
        CliRunner().invoke(main, ["status", "--experiment", "other", *rd]))
    assert "run 0123abcd: not found" in _one_error_line(CliRunner().invoke(main, ["eval", "0123abcd", *rd]))
    assert "not in the model registry" in _one_error_line(
        CliRunner().invoke(main, ["eval", "models:/nosuch@best-fid1", *rd]))
    line = _one_error_line(CliRunner().invoke(main, ["eval", trial, "--extractor", "nosuch", *rd]))
    assert "unknown feature extractor 'nosuch'" in line
    # a sweep that exists but has no scores yet is not bad input: exit 1
    assert "has logged fid1_best" in _one_error_line(CliRunner().invoke(main, ["best", "--sweep", "s1", *rd]), 1)


def test_data_prepare_of_a_missing_source_exits_2(tmp_path):
    res = CliRunner().invoke(main, ["data", "prepare", str(tmp_path / "nosuch"), "--out", str(tmp_path / "out")])
    assert "nosuch: no such file or folder" in _one_error_line(res)
    assert not (tmp_path / "out").exists()


def test_preview_writes_nothing_without_png(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["preview", str(REPO / "sweeps" / "curriculum.yaml"), "--no-timing"])
    assert res.exit_code == 0 and "trial" in res.output and "schedules plot" not in res.output, res.output
    assert _files(tmp_path) == []
