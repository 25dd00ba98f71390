"""Nested dataclass configs: YAML files plus dotted command-line overrides.

Both stages use this loader. An experiment is one YAML file; a run changes it with
`key.sub=value` arguments. Unknown keys and values of the wrong type are errors that
name the file (or override) and the field, raised before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the source and field."""


class RunFailed(RuntimeError):
    """A run that started but cannot finish honestly (e.g. its values went non-finite); the message
    names the step and what failed. Nothing is exported or published from such a run."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from a YAML file and `key.sub=value` overrides, then run its `validate()`."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    for override in overrides or []:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r}: expected key.sub=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    config = from_dict(cls, raw, source=source)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def parse_cli(cls: type[T], argv: list[str]) -> T:
    """`--config file.yaml key=value ...` as the entry scripts take it."""
    path = None
    rest = []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            path = next(args, None)
            if path is None:
                raise ConfigError("--config needs a YAML path")
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return load_config(cls, path, rest)


def run_entry(cls: type[T], argv: list[str], load_train: Callable[[], Callable[[T], Any]]) -> int:
    """An entry script's main: parse `--config file.yaml key=value ...` into `cls`, run its
    `validate_inputs()` (files and references checked before any model loads), then the trainer
    `load_train()` returns (imported only now: torch and diffusers take seconds). A ConfigError,
    from the config or from the trainer (e.g. a batch that does not split over the launched
    processes), is one line on stderr and exit status 2, not a traceback; a RunFailed (a run stopped
    by the non-finite guard) is one line and exit status 1."""
    try:
        config = parse_cli(cls, argv)
        validate_inputs = getattr(config, "validate_inputs", None)
        if callable(validate_inputs):
            validate_inputs()
        load_train()(config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def from_dict(cls: type[T], raw: dict[str, Any], source: str = "<dict>", prefix: str = "") -> T:
    """Recursively turn a mapping into the dataclass `cls`, checking names and types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: field '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown field '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(hints[name], value, source, prefix + name) for name, value in raw.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{part}' is not a section")
    node[parts[-1]] = value


def _coerce(tp: Any, value: Any, source: str, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, field)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, source, field + ".")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: field '{field}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: field '{field}' must be a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(item, v, source, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: field '{field}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        # YAML reads `1e-4` (no dot) as a string; accept any number spelling.
        try:
            if not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            pass
        raise ConfigError(f"{source}: field '{field}' must be a number, got {value!r}")
    if tp in (int, bool, str) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        if tp is str and isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{source}: field '{field}' must be {tp.__name__}, got {value!r}")
    return value


def require_local(value: str, field_name: str, kind: str) -> None:
    """A config path that must exist here: kind "file", "folder" or "path" (either)."""
    path = Path(value)
    exists = path.is_file() if kind == "file" else path.is_dir() if kind == "folder" else path.exists()
    if not exists:
        raise ConfigError(f"{field_name}: {kind} not found: {value}")


def check_options(field_name: str, options: Any) -> None:
    """Run an options record's own `validate()` and name its section in the error."""
    try:
        options.validate()
    except ValueError as error:
        raise ConfigError(f"{field_name}: {error}") from None
