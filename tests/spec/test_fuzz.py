"""Fuzz the sweep spec (hypothesis): whatever a user writes, `afsweep validate` either accepts it or prints one
line naming the file, with exit code 2, never a traceback."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec

VALID = {
    "name": "fuzz",
    "data": {"dataset": "fashion-mnist", "mode": "resampled"},
    "base": {"preset": "tiny-cpu", "overrides": {"total_steps": 50, "alpha.k_e": 0.5}},
    "train": {"workers": 2, "eval_every": 10},
    "search": {
        "num_trials": 2,
        "space": {
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "loss.beta": {"type": "choice", "values": [True, False]},
            "loss.beta_k": {"type": "uniform", "low": 0.5, "high": 2.0, "when": {"loss.beta": True}},
        },
        "early_stopping": {"scheduler": "asha"},
    },
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["fid1", "uniform", "tiny-cpu", "alpha.k_e", "1e-3"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(d, prefix=()):
    """Every path into the nested dict (sections and leaves)."""
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


PATHS = list(_paths(VALID))


@st.composite
def mutated_specs(draw):
    spec = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        kind = draw(st.sampled_from(["replace", "delete", "add_key"]))
        parent = spec
        for p in path[:-1]:
            parent = parent.get(p) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                break
        if not isinstance(parent, dict):
            continue
        if kind == "replace":
            parent[path[-1]] = draw(values)
        elif kind == "delete":
            parent.pop(path[-1], None)
        else:
            target = parent.get(path[-1])
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return yaml.safe_dump(spec, sort_keys=False)


garbage_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, b: a + "\n" + b, st.sampled_from(["name: x", "search: {", "- a", "name: [", ": :"]),
              st.text(max_size=40)),
)


def _check(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "spec.yaml"
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
        try:
            load_spec(p)
            ok = True
        except SpecError as e:
            ok = False
            assert "\n" not in str(e) and str(p) in str(e), str(e)
        res = CliRunner().invoke(main, ["validate", str(p)])
        assert "Traceback" not in res.output, res.output
        if ok:
            assert res.exit_code == 0, res.output
        else:
            assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert len(lines) == 1 and str(p) in lines[0], res.output


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated_specs())
def test_mutated_specs_are_accepted_or_one_line_exit_2(text):
    _check(text)


@FUZZ
@given(garbage_text)
def test_garbage_text_is_one_line_exit_2(text):
    _check(text)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=64))
def test_binary_files_are_one_line_exit_2(data):
    _check(data)
