"""The sweep spec: valid specs load, every kind of bad input is one line naming the file and key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def test_every_shipped_spec_loads():
    specs = sorted((REPO / "sweeps").glob("*.yaml"))
    assert specs, "no sweep specs shipped"
    for p in specs:
        spec = load_spec(p)
        assert spec.name


def test_curriculum_spec_searches_the_required_knobs():
    spec = load_spec(REPO / "sweeps" / "curriculum.yaml")
    for key in ("alpha.k_s", "alpha.k_e", "alpha.gamma", "ratio_fm.start", "optim.lr"):
        assert key in spec.search.space
    assert spec.search.num_trials >= 4
    assert spec.train.workers >= 2


def test_set_overrides(tmp_path):
    p = write(tmp_path, "name: t\nsearch: {num_trials: 2}\n")
    spec = load_spec(p, ["search.num_trials=7", "base.overrides.alpha.k_e=0.5", "train.workers=3"])
    assert spec.search.num_trials == 7
    assert spec.base.overrides == {"alpha.k_e": 0.5}
    assert spec.train.workers == 3


@pytest.mark.parametrize("text, where", [
    ("name: t\nsearch: {num_trials: 2\n", "invalid YAML"),
    ("name: t\nbogus: 1\n", "bogus: unknown key"),
    ("name: t\nsearch: {num_trails: 2}\n", "search.num_trails: unknown key"),
    ("name: t\nsearch: {num_trials: many}\n", "search.num_trials"),
    ("name: t\nsearch: {space: {optim.lr: {type: uniform, low: 1, high: 0}}}\n", "search.space.optim.lr"),
    ("name: t\nsearch: {space: {optim.lr: {type: gaussian}}}\n", "search.space.optim.lr"),
    ("name: t\nsearch: {space: {alpha.nope: {type: uniform, low: 0, high: 1}}}\n", "search.space.alpha.nope"),
    ("name: t\nbase: {overrides: {optim.lrr: 0.1}}\n", "base.overrides"),
    ("name: t\nbase: {overrides: {total_steps: many}}\n", "base.overrides"),
    ("name: t\nbase: {preset: nope}\n", "base.preset"),
    ("- just\n- a list\n", "top level"),
    ("name: 'bad name!'\n", "name"),
])
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path, text, where):
    p = write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(p) in msg
    assert where in msg


def test_cli_bad_spec_exit_2_no_traceback(tmp_path):
    p = write(tmp_path, "name: t\nsearch: {num_trails: 2}\n")
    res = CliRunner().invoke(main, ["launch", str(p), "--run-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "search.num_trails" in lines[0] and str(p) in lines[0]
    assert not (tmp_path / "runs").exists(), "nothing may be started for a bad spec"


def test_cli_missing_spec_exit_2(tmp_path):
    res = CliRunner().invoke(main, ["launch", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2
    assert "nope.yaml" in res.output and "not found" in res.output and "Traceback" not in res.output


def test_frozen_spec_round_trips(tmp_path):
    spec = load_spec(REPO / "sweeps" / "curriculum.yaml")
    p = write(tmp_path, yaml.safe_dump(spec.model_dump(mode="json")))
    assert load_spec(p) == spec


def test_validate_checks_every_bound_of_the_space(tmp_path):
    """A bound outside the method's constraints fails validate (exit 2, file and key), not the trial later."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    p = tmp_path / "s.yaml"
    p.write_text("name: t\nsearch: {space: {alpha.end: {type: uniform, low: 0.0, high: 1.5}}}\n")
    res = CliRunner().invoke(main, ["validate", str(p)])
    assert res.exit_code == 2, res.output
    assert f"{p}: search.space.alpha.end.high: alpha.end: Input should be less than or equal to 1" in res.output
    p.write_text("name: t\nsearch: {space: {model.patch_size: {type: choice, values: [2, 3]}}}\n")
    res = CliRunner().invoke(main, ["validate", str(p)])
    assert res.exit_code == 2 and "search.space.model.patch_size.values[1]" in res.output, res.output


def test_set_reaches_the_fields_of_a_dotted_search_key(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nsearch: {space: {alpha.k_e: {type: uniform, low: 0.4, high: 0.6}}}\n")
    spec = load_spec(p, ["search.space.alpha.k_e.high=0.7", "search.space.optim.lr={type: fixed, value: 0.001}"])
    assert spec.search.space["alpha.k_e"].high == 0.7 and spec.search.space["optim.lr"].value == 0.001
    msg = r"search.space.alpha.k_e.low: alpha: k_e \(0.4\) must not be before k_s \(0.45\)"
    with pytest.raises(SpecError, match=msg):
        load_spec(p, ["search.space.alpha.k_e.high=1.7", "base.overrides.alpha.k_s=0.45"])  # k_e 0.4 before k_s


def test_the_launch_line_gives_the_searched_trial_length_as_a_range():
    from orchestrator.sweep.driver import _steps_line

    cost = load_spec(REPO / "sweeps" / "pareto_cost.yaml")
    assert _steps_line(cost, 300) == "100-800 steps (searched)"
    assert _steps_line(load_spec(REPO / "sweeps" / "curriculum.yaml"), 1000) == "1000 steps each"
