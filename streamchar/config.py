"""Configuration: one validated root config per service or run, from a TOML file + environment.

`load_config(RootConfig, path, env)` starts from the dataclass defaults, merges the TOML file over
them, then environment variables named ``STREAMCHAR_<FIELD>`` (nested: ``STREAMCHAR_<SECTION>__<FIELD>``).
Unknown keys and values of the wrong type are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "STREAMCHAR_"


class ConfigError(ValueError):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if tp in (int, float, str):
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, where) for v in items if v != "")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def _build(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def _env_tree(cls: type, env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name.upper()}"
        if dataclasses.is_dataclass(hints[f.name]):
            sub = _env_tree(hints[f.name], env, key + "__")
            if sub:
                tree[f.name] = sub
        elif key in env:
            tree[f.name] = env[key]
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_config(cls: type[T], path: str | Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> T:
    """Defaults < TOML file < environment < explicit overrides (e.g. CLI flags)."""
    values: dict[str, Any] = dataclasses.asdict(cls())  # type: ignore[call-overload]
    if path is not None:
        try:
            values = _merge(values, tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
    values = _merge(values, _env_tree(cls, os.environ if env is None else env, ENV_PREFIX))
    if overrides:
        values = _merge(values, overrides)
    return _build(cls, values, "")
