"""Typed configs that round-trip through JSON and YAML.

Every model in this package is built from a dataclass config that subclasses :class:`Config`.
A config is saved beside the weights, so a checkpoint folder describes itself and loads without
the training code. Loading is strict: an unknown key, a missing required key or a value of the
wrong type is a ``ValueError`` naming the field, not a silently ignored typo.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for dataclass configs: strict ``from_dict``, ``to_dict``, ``save``/``load``, overrides."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (lists instead of tuples) fit for JSON and YAML."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
        """Build from plain data, checking every key and value against the field types."""
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}"
            )
        kwargs = {}
        for name, value in data.items():
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
        missing = [
            n
            for n, f in fields.items()
            if n not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"{where}: missing required key(s) {missing}")
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        """Write as JSON (``.json``) or YAML (``.yaml``/``.yml``)."""
        path = Path(path)
        text = dump_text(self.to_dict(), path)
        path.write_text(text)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        """Read a config written by :meth:`save` (or by hand)."""
        return cls.from_dict(load_text(Path(path)), where=str(path))

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated like ``from_dict``)."""
        data = self.to_dict()
        data.update({k: _to_plain(v) for k, v in changes.items()})
        return type(self).from_dict(data)

    def with_overrides(self: C, overrides: list[str]) -> C:
        """Apply ``dotted.key=value`` overrides (values parsed as YAML), e.g. ``unet.channels=64``."""
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like 'dotted.key=value'")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            node = data
            for i, part in enumerate(parts[:-1]):
                if not isinstance(node.get(part), dict):
                    raise ValueError(
                        f"override {item!r}: {'.'.join(parts[: i + 1])!r} is not a config section"
                    )
                node = node[part]
            if parts[-1] not in node:
                raise ValueError(
                    f"override {item!r}: unknown key {key!r}; keys here are {sorted(node)}"
                )
            node[parts[-1]] = yaml.safe_load(raw)
        return type(self).from_dict(data)


def dump_text(data: dict[str, Any], path: Path) -> str:
    """Serialize plain data for ``path``'s suffix (JSON or YAML)."""
    if path.suffix == ".json":
        return json.dumps(data, indent=2) + "\n"
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_dump(data, sort_keys=False)
    raise ValueError(f"config path {str(path)!r}: suffix must be .json, .yaml or .yml")


def load_text(path: Path) -> dict[str, Any]:
    """Parse a JSON or YAML file into plain data, with errors that name the file."""
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {str(path)!r} is not valid: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and nested dicts to configs."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ValueError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        return hint.from_dict(value, where=where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


__all__ = ["Config", "dump_text", "load_text"]
