"""Typed configs: dataclasses hold every default; YAML files and `key=value` flags override them.

Every run writes its fully resolved config next to its outputs (`dump`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from longreach.errors import InputError

T = TypeVar("T")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn a YAML/CLI value into the field's declared type (nested dataclasses included)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise InputError(f"expected a mapping, got {value!r}", field=where)
        return from_dict(hint, value, prefix=where + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        (item,) = typing.get_args(hint)[:1] or (Any,)
        out = [_coerce(v, item, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict or hint is Any or origin is typing.Literal:
        return value
    if hint is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"expected true/false, got {value!r}", field=where)
    if hint in (int, float, str) and value is not None and not isinstance(value, hint):
        try:
            return hint(float(value)) if hint is int and isinstance(value, str) and "e" in value.lower() \
                else hint(value)
        except (TypeError, ValueError):
            raise InputError(f"expected {hint.__name__}, got {value!r}", field=where) from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error, not a silent drop."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown key(s) {unknown}; known: {sorted(names)}", field=prefix.rstrip(".") or None)
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, then the YAML file at `path`, then `key.sub=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"invalid YAML: {e}", path=str(path),
                             line=mark.line + 1 if mark else None) from None
        if not isinstance(loaded, dict):
            raise InputError("expected a mapping at the top level", path=str(path))
        data.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    try:
        return from_dict(cls, data)
    except InputError as e:
        if path is not None and e.path is None:
            raise InputError(e.reason, path=str(path), field=e.field) from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (and it reads back through `load`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg))), sort_keys=False))
