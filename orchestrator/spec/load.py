"""Reading a sweep spec: the YAML file, `--set` overrides, validation into `orchestrator.spec.models`, and the
checks that build every configuration a trial can get (`trial_config.method_config`).

Every error comes out as one `SpecError` line that names the file and the key, e.g.
`sweeps/x.yaml: search.space.optim.lr.low: Input should be a valid number`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alphaflow.config import ConfigError, dotted_keys
from alphaflow.errors import InputError
from orchestrator.spec.models import METHOD_KEY, PRESET_KEY, SweepSpec
from orchestrator.spec.search_space import Choice, Fixed
from orchestrator.spec.strict import FieldError
from orchestrator.spec.trial_config import method_config


class SpecError(ValueError, InputError):
    """A sweep spec that cannot be used; the message is one line naming the file and the key."""


def _loc(err: dict) -> str:
    # pydantic adds the union member tag (e.g. "uniform") to the location of discriminated unions: keep it out
    parts = [_show_key(p) for p in err["loc"]]
    return ".".join(parts) or "(top level)"


def _show_key(key) -> str:
    """A key as it reads in the spec; quoted when it holds whitespace or control characters (one-line errors)."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


class _SpecLoader(yaml.SafeLoader):
    """YAML as people write numbers: YAML 1.1 reads `1e4` and `1.0e4` (no dot or no exponent sign) as strings."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """A spec's YAML (or a --set value), with 1e4-style numbers read as numbers."""
    return yaml.load(text, Loader=_SpecLoader)


def _first_error(path: str, e: ValidationError) -> SpecError:
    err = e.errors()[0]
    msg = err["msg"].replace("Value error, ", "")
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):  # a section's validator naming one of its keys
        err = {**err, "loc": (*err["loc"], cause.key)}
        msg = cause.message
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return SpecError(f"{path}: {_loc(err)}: {msg}{more}")


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise SpecError(f"--set {key}: {p} is not a section")
    d[parts[-1]] = value


def _set_space_key(space: dict, rest: str, value: Any) -> None:
    """`--set search.space.alpha.k_e.high=0.7`: the searched key (itself dotted) is the longest one the space has;
    what follows it is a field of its distribution. Otherwise the whole distribution is set."""
    for name in sorted(space, key=len, reverse=True):
        if rest.startswith(name + ".") and isinstance(space[name], dict):
            space[name] = {**space[name], rest[len(name) + 1:]: value}
            return
    space[rest] = value


def apply_sets(raw: dict, sets: list[str], path: str) -> dict:
    """Apply `--set key=value` overrides (value parsed as YAML) to the raw spec dict."""
    raw = copy.deepcopy(raw)
    for item in sets:
        if "=" not in item:
            raise SpecError(f"{path}: --set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        try:
            value = read_yaml(text)
        except yaml.YAMLError:
            value = text
        # method keys may contain dots themselves (base.overrides.alpha.k_e): keep the rest of the key whole
        if key.startswith("base.overrides."):
            raw.setdefault("base", {}).setdefault("overrides", {})[key[len("base.overrides."):]] = value
        elif key.startswith("search.space."):
            _set_space_key(raw.setdefault("search", {}).setdefault("space", {}), key[len("search.space."):], value)
        else:
            _set_dotted(raw, key, value)
    return raw


def parse_spec(raw: Any, path: str = "<spec>") -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise _first_error(path, e) from None
    _check_method_keys(spec, path)
    return spec


def load_spec(path: str | Path, sets: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep spec. Raises SpecError (one line) on any problem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: spec file not found")
    try:
        raw = read_yaml(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{p}:{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a text file") from None
    if sets:
        raw = apply_sets(raw if isinstance(raw, dict) else {}, sets, str(p))
    return parse_spec(raw, str(p))


def _check_method_keys(spec: SweepSpec, path: str) -> None:
    """Every configuration a trial can get must be valid: the base (preset + overrides), and each bound of each
    searched key on it, built by the same function that builds every trial."""
    try:
        method_config(spec, {})
    except (KeyError, ValueError) as e:
        where = "base.preset" if isinstance(e, KeyError) else "base.overrides"
        raise SpecError(f"{path}: {where}: {_message(e)}") from None
    space = spec.search.space
    for key, names in ((PRESET_KEY, "preset"), (METHOD_KEY, "method")):
        if key in space and not isinstance(space[key], (Choice, Fixed)):
            raise SpecError(f"{path}: search.space.{key}: must be a choice or fixed list of {names} names")
    # each bound, with the other searched keys at typical values (a cross-field rule such as k_s <= k_e is judged
    # against what the search would set, not against a base value the search replaces)
    typical = {k: d.representative() for k, d in space.items() if _is_known(spec, k, d)}
    _check_methods(spec, path, {k: v for k, v in typical.items() if k != METHOD_KEY})
    for key, dist in space.items():
        others = {k: v for k, v in typical.items() if k != key}
        for bound, value in dist.extremes().items():
            try:
                method_config(spec, {**others, key: value})
            except (KeyError, ConfigError) as e:
                where = f"search.space.{key}" if "unknown key" in str(e) else f"search.space.{key}.{bound}"
                raise SpecError(f"{path}: {where}: {_message(e)}") from None
        for cond in (dist.when or {}):
            if cond not in spec.search.space:
                raise SpecError(f"{path}: search.space.{key}.when: {cond!r} is not a searched parameter")


def _check_methods(spec: SweepSpec, path: str, others: dict[str, Any]) -> None:
    """Every entry of `methods` builds into a valid config (with the searched keys at typical values), sets only
    method keys, and none that the space also searches (which would silently override it)."""
    for name, overrides in spec.methods.items():
        for key in dotted_keys(overrides):
            if key == PRESET_KEY:
                raise SpecError(f"{path}: methods.{name}.preset: a method sets method keys; choose the preset with "
                                f"base.preset or search.space.preset")
            if key in spec.search.space:
                raise SpecError(f"{path}: methods.{name}.{key}: also searched (search.space.{key}); set each key "
                                f"in one place")
        try:
            method_config(spec, {**others, METHOD_KEY: name})
        except (KeyError, ConfigError) as e:
            raise SpecError(f"{path}: methods.{name}: {_message(e)}") from None


def _is_known(spec: SweepSpec, key: str, dist) -> bool:
    """A searched key whose typical value is valid on its own (else its own check reports it)."""
    try:
        method_config(spec, {key: dist.representative()})
        return True
    except (KeyError, ValueError):
        return False


def _message(e: Exception) -> str:
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)
