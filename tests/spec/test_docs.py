"""docs/spec.md documents every field of the sweep spec: a field added to the schema without its line fails here."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from orchestrator.spec import SweepSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        typ = field.annotation
        if isinstance(typ, type) and issubclass(typ, BaseModel):
            out += _fields(typ, key + ".")
        else:
            out.append(key)
    return out


def test_every_spec_field_is_documented():
    text = DOC.read_text()
    missing = [k for k in _fields(SweepSpec) if f"`{k}`" not in text]
    assert not missing, f"fields missing from docs/spec.md: {missing}"


def test_every_distribution_type_is_documented():
    text = DOC.read_text()
    for kind in ("uniform", "loguniform", "int", "choice", "fixed"):
        assert f"| `{kind}` |" in text


def test_every_method_key_is_documented():
    from alphaflow.config import TrainConfig, flatten

    text = DOC.read_text()
    missing = []
    for key in flatten(TrainConfig()):
        section, _, leaf = key.rpartition(".")
        # grouped rows list siblings as `alpha.start`, `alpha.end` or `ratio_fm.kind`, `.start`, ...
        if f"`{key}`" not in text and not (section and f"`.{leaf}`" in text and f"`{section}." in text):
            missing.append(key)
    assert not missing, f"method keys missing from docs/spec.md: {missing}"


def test_every_preset_is_documented():
    from alphaflow.presets import PRESETS

    text = DOC.read_text()
    assert [p for p in PRESETS if f"`{p}`" not in text] == []


def test_the_readme_lists_every_preset_and_sweep_spec():
    from alphaflow.presets import PRESETS

    readme = (DOC.parents[1] / "README.md").read_text()
    specs = sorted(p.name for p in (DOC.parents[1] / "sweeps").glob("*.yaml"))
    missing = [f"preset {n}" for n in PRESETS if f"`{n}`" not in readme]
    missing += [f"sweeps/{n}" for n in specs if f"`sweeps/{n}`" not in readme]
    assert not missing, f"not in README.md: {missing}"


def test_code_and_docs_cite_no_issue_numbers():
    """Issue numbers mean nothing to a reader of the code: the why goes in the comment itself."""
    import re

    root = DOC.parents[1]
    cited = re.compile(r"\bissues? #?\d+\b|\(#\d+\)", re.IGNORECASE)
    found = [f"{p.relative_to(root)}:{i}" for folder in ("alphaflow", "orchestrator", "tests", "benchmarks", "scripts",
                                                          "docs", "sweeps", "infra")
             for p in sorted((root / folder).rglob("*")) if p.suffix in (".py", ".md", ".yaml", ".sh")
             for i, line in enumerate(p.read_text().splitlines(), 1) if cited.search(line)]
    found += [f"README.md:{i}" for i, line in enumerate((root / "README.md").read_text().splitlines(), 1)
              if cited.search(line)]
    assert not found, found
