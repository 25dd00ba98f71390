"""Nested dataclass configs: YAML files plus dotted command-line overrides.

Both stages use this loader. An experiment is one YAML file; a run changes it with
`key.sub=value` arguments (`rewards.0.weight=2` for a list item). Unknown keys, values of the
wrong type and non-finite numbers are errors that name where the value came from (the file,
with the line for a syntax error, or the override) and the field, raised before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")
FieldPath = tuple  # ("rewards", 0, "weight"): section and field names, list indices as ints
# A field path at the start of a validate() message ("train.log_every must be ...", "rewards[1].weight ...").
_LEADING_FIELD = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*")
_FIELD_PART = re.compile(r"[A-Za-z_]\w*|\[(\d+)\]")


class ConfigError(ValueError):
    """A config file, override or input that cannot be used; the message names the source and field.
    Subclasses (bad manifests) are reported the same way: one line, exit status 2."""


class _Sources:
    """Where each field's value came from: the last override that reached it, else the file."""

    def __init__(self, file: str | None):
        self.file = file
        self.overrides: list[tuple[FieldPath, str]] = []

    def of(self, path: FieldPath) -> str | None:
        for key, text in reversed(self.overrides):
            # an override of a section sets its fields; one of a field answers for its section's message
            if path[: len(key)] == key or key[: len(path)] == path:
                return f"override {text}"
        return self.file


class RunFailed(RuntimeError):
    """A run that started but cannot finish honestly (e.g. its values went non-finite); the message
    names the step and what failed. Nothing is exported or published from such a run."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from a YAML file and `key.sub=value` overrides, then run its `validate()`."""
    raw: dict[str, Any] = {}
    sources = _Sources(None if path is None else str(path))
    if path is not None:
        raw = _read_yaml(Path(path))
    for text in overrides or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {text!r}: expected key.sub=value")
        field_path = _override_path(key.strip(), text)
        _set_override(raw, field_path, _override_value(value, text), text)
        sources.overrides.append((field_path, text))
    config = _build(cls, raw, lambda p: sources.of(p) or "<defaults>", ())
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as error:
            raise ConfigError(_attribute(str(error), sources)) from None
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
    """An entry script's main: parse `--config file.yaml key=value ...` into `cls` (validated),
    then run the trainer `load_train()` returns (imported only now: torch and diffusers take
    seconds), which checks the config's inputs itself. A ConfigError, from the config or from the
    trainer (a missing file, a bad manifest row, a batch that does not split over the launched
    processes), is one line on stderr and exit status 2, not a traceback; a RunFailed (a run stopped
    by the non-finite guard) is one line and exit status 1."""
    try:
        config = parse_cli(cls, argv)  # before load_train(): a bad config never waits for the imports
        load_train()(config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except RunFailed as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def from_dict(cls: type[T], raw: dict[str, Any], source: str = "<dict>") -> T:
    """Recursively turn a mapping into the dataclass `cls`, checking names and types; errors
    name `source` and the field."""
    return _build(cls, raw, lambda _: source, ())


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def _override_path(key: str, text: str) -> FieldPath:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {text}: empty name in {key!r}")
    return tuple(int(part) if part.isdigit() else part for part in parts)


def _override_value(value: str, text: str) -> Any:
    if not value.strip():
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text}: not a YAML value ({getattr(error, 'problem', None) or error})") from None


def _set_override(raw: dict[str, Any], path: FieldPath, value: Any, text: str) -> None:
    """Set `value` at `path` in the raw mapping; integer parts index lists the file (or an earlier override) set."""
    node: Any = raw
    for depth, part in enumerate(path):
        here = _field_name(path[:depth]) or "<root>"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ConfigError(f"override {text}: '{here}' is not a list the config file sets "
                                  f"(set the whole list: {here}=[...])")
            if part >= len(node):
                raise ConfigError(f"override {text}: index {part} out of range ('{here}' has {len(node)} items)")
        elif not isinstance(node, dict):
            raise ConfigError(f"override {text}: '{here}' is not a section")
        if depth == len(path) - 1:
            node[part] = value
        elif isinstance(part, int):
            node = node[part]
        else:
            if node.get(part) is None and not isinstance(path[depth + 1], int):
                node[part] = {}  # a section the file leaves out (or leaves empty)
            node = node.get(part)


def _field_name(path: FieldPath) -> str:
    """("rewards", 0, "weight") -> "rewards[0].weight", as validate() messages spell fields."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name


def _attribute(message: str, sources: _Sources) -> str:
    """Prefix a validate() message with the source of the field it starts with (the override
    that set it, else the file); bare when neither applies (defaults only). A message that does
    not start with a field ("set train.max_steps > 0 or ...") matches no override: the file."""
    match = _LEADING_FIELD.match(message)
    path = tuple(int(m[1]) if m[1] else m[0] for m in _FIELD_PART.finditer(match.group())) if match else ()
    source = sources.of(path) if path else sources.file
    return f"{source}: {message}" if source else message


def _build(cls: type[T], raw: Any, where: Callable[[FieldPath], str], path: FieldPath) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(path)}: field '{_field_name(path) or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        bad = path + (unknown[0],)
        raise ConfigError(f"{where(bad)}: unknown field '{_field_name(bad)}' (known: {', '.join(sorted(fields))})")
    return cls(**{name: _coerce(hints[name], value, where, path + (name,)) for name, value in raw.items()})


def _coerce(tp: Any, value: Any, where: Callable[[FieldPath], str], path: FieldPath) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    field = _field_name(path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, where, path)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where(path)}: field '{field}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(path)}: field '{field}' must be a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(item, v, where, path + (i,)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(path)}: field '{field}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        # YAML reads `1e-4` (no dot) as a string; accept any number spelling, but only finite ones:
        # a nan or inf learning rate (or weight, or scale) would train on garbage and report it.
        try:
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise ConfigError(f"{where(path)}: field '{field}' must be a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where(path)}: field '{field}' must be a finite number, got {value!r}")
        return number
    if tp in (int, bool, str) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        if tp is str and isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{where(path)}: field '{field}' must be {tp.__name__}, got {value!r}")
    return value


def require_local(value: str, field_name: str, kind: str) -> None:
    """A config path that must exist here: kind "file", "folder" or "path" (either)."""
    path = Path(value)
    exists = path.is_file() if kind == "file" else path.is_dir() if kind == "folder" else path.exists()
    if not exists:
        raise ConfigError(f"{field_name}: {kind} not found: {value}")


def check_options(field_name: str, options: Any) -> None:
    """Run an options record's own `validate()`, whose messages start with its field
    ("height must be >= 1, got 0"), and name the section: "generator.vace.height must be ..."."""
    try:
        options.validate()
    except ValueError as error:
        raise ConfigError(f"{field_name}.{error}") from None


def require_at_least(section: str, record: Any, minimum: int, *names: str) -> None:
    """Each named count of `record` is >= minimum; the error names `section.name` (just `name`
    when section is empty, for option records that check_options prefixes) and the value."""
    for name in names:
        value = getattr(record, name)
        if value < minimum:
            raise ConfigError(f"{f'{section}.' if section else ''}{name} must be >= {minimum}, got {value}")


def require_positive(section: str, record: Any, *names: str) -> None:
    """Each named number of `record` is > 0 (learning rates, scales); errors as require_at_least."""
    for name in names:
        value = getattr(record, name)
        if not value > 0:
            raise ConfigError(f"{f'{section}.' if section else ''}{name} must be > 0, got {value}")
