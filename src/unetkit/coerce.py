"""Typed settings from parsed JSON/YAML: nested mappings into the config dataclasses,
each value checked against its declared type (:meth:`unetkit.config.Config.from_dict`).
Imports no other unetkit module."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def from_dict(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
    parsers = {f.name: f.metadata.get("parse") for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in raw.items():
        if parsers[name] is not None and isinstance(value, str) and value.lower() != "none":
            try:
                value = parsers[name](value)
            except ValueError as err:
                raise ValueError(f"{where}.{name}: {err}") from err
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check a JSON/YAML value against the declared type and convert it: lists -> tuples,
    nested dataclasses, numbers written as text ("3e-4": YAML 1.1 reads that as a string).
    A value of the wrong type raises ValueError naming the setting, the value and the type.
    """
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        # "none" as text means unset, as the flags take it (older config.json files too).
        if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        errors = []
        for arg in args:  # the first type that takes the value (bool before str)
            try:
                return _coerce(arg, value, where)
            except ValueError as err:
                errors.append(err)
        raise errors[-1]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            kind = "a whole number" if hint is int else "a number"
            raise ValueError(f"{where}: expected {kind}, got {value!r}")
        if hint is int:
            if float(number) != int(number):
                raise ValueError(f"{where}: expected a whole number, got {value!r}")
            return int(number)
        return float(number)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected text, got {value!r}")
        return value
    return value
