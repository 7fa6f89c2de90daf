"""Typed dataclass configs from YAML/JSON that reject unknown keys and report every problem at once.

The pattern follows litgpt's ``config.py`` and torchtitan's ``config/``: configs are plain
dataclasses; this module turns nested mappings into them, checks types, and collects *all* problems
(unknown keys, wrong types, failed ``validate()`` checks) into one :class:`ConfigError`, each naming
the file and the dotted field, so a researcher fixes a config in one pass instead of one error per run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """Raised when a config has problems; ``problems`` lists each as ``'<where>.<field>: <what>'``."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {source}:\n{lines}")


_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def read_mapping(path: str | os.PathLike) -> dict:
    """Read a YAML (``.yaml``/``.yml``) or JSON file holding one mapping.

    Raises:
        ConfigError: the file is missing, unparsable, or its top level is not a mapping.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError([f"file not found: {path}"], source=path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = load_json(text) if path.endswith(".json") else _load_unique_keys(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError([f"cannot parse: {e}"], source=path) from e
    except DuplicateKeys as e:
        raise ConfigError(e.problems, source=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], source=path)
    return data


class DuplicateKeys(Exception):
    """A YAML mapping or JSON object gives a key twice; ``problems`` has one line per duplicate."""

    def __init__(self, problems: list[str]):
        self.problems = problems


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that records every mapping key given twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except (TypeError, yaml.YAMLError):
                continue  # unhashable keys: the base constructor reports them
            line = key_node.start_mark.line + 1
            if key in first:
                self.duplicates.append(f"key {key!r} appears twice in one mapping, on line {first[key]} and line "
                                       f"{line}; remove one (the file would silently keep line {line}'s value)")
            else:
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_unique_keys(text: str):
    """``yaml.safe_load`` that raises :class:`DuplicateKeys` listing every duplicated key with both lines."""
    loader = _UniqueKeyLoader(text)
    loader.duplicates = []
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if loader.duplicates:
        raise DuplicateKeys(loader.duplicates)
    return data


def load_json(text: str):
    """``json.loads`` that raises :class:`DuplicateKeys` for a key given twice in one object.

    The lines come from parsing the text as YAML (JSON is nearly a subset); where that fails, the
    problem names the key without lines.
    """
    dups: list[str] = []

    def pairs(items):
        seen = set()
        for k, _ in items:
            if k in seen:
                dups.append(k)
            seen.add(k)
        return dict(items)

    data = json.loads(text, object_pairs_hook=pairs)
    if dups:
        try:
            _load_unique_keys(text)
        except DuplicateKeys:
            raise
        except yaml.YAMLError:
            pass
        raise DuplicateKeys([f"key {k!r} appears twice in one object; remove one" for k in dups])
    return data


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply dotted ``key.sub=value`` overrides (values parsed as YAML) to a nested mapping in place.

    Example: ``["train.max_steps=100", "model.dropout=0.0"]``. Unknown keys are *not* rejected here;
    the dataclass loader rejects them with the full list of problems.

    Raises:
        ConfigError: an override has no ``=`` or walks through a non-mapping value.
    """
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r} must look like key.sub=value")
            continue
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            problems.append(f"override {item!r}: cannot parse value: {e}")
            continue
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                problems.append(f"override {item!r}: {part!r} is not a mapping")
                break
            node = nxt
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, source=source)
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Convert/check ``value`` against annotation ``tp``; append problems instead of raising."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(value, non_none[0], where, problems)
        for a in non_none:  # first type that converts without problems wins
            trial: list[str] = []
            out = _convert(value, a, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected one of {[_type_name(a) for a in non_none]}, got {value!r}")
        return value
    if origin is Literal:
        if value not in args:
            problems.append(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
            return None
        return _build(tp, value, where, problems)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            return value
        item_tp = args[0] if args else Any
        out = [_convert(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return value
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{where}", problems): _convert(v, vt, f"{where}.{k}", problems)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; it is what people type
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type[T], data: Mapping, where: str, problems: list[str]) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}.{key}: unknown key{hint}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}", problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{where}.{name}: required key is missing")
    try:
        obj = cls(**{k: v for k, v in kwargs.items() if v is not None or _allows_none(hints[k])})
    except TypeError as e:  # a required field was missing; already reported above
        if not problems:
            problems.append(f"{where}: {e}")
        return None  # type: ignore[return-value]
    validate = getattr(obj, "validate", None)
    if callable(validate):
        had_problems = bool(problems)
        try:
            problems.extend(f"{where}.{p}" for p in validate())
        except (TypeError, AttributeError, ValueError):
            # A field already reported as mistyped can break a cross-field check; the type problem is
            # the one to fix first, so only a failure on an otherwise clean config is a bug.
            if not had_problems:
                raise
    return obj


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def from_mapping(cls: type[T], data: Mapping, source: str = "config", root: str | None = None) -> T:
    """Build dataclass ``cls`` from a nested mapping, checking every key and type.

    Each dataclass may define ``validate(self) -> list[str]`` for cross-field checks; its messages are
    prefixed with the dotted field path.

    Args:
        cls: the dataclass type.
        data: nested mapping (from YAML/JSON).
        source: file name (or other origin) used in the error message.
        root: dotted prefix for field paths (default: the class name in lower case).

    Raises:
        ConfigError: listing every unknown key, missing required key, type error and failed check.
    """
    problems: list[str] = []
    obj = _build(cls, data, root or cls.__name__.lower(), problems)
    if problems:
        raise ConfigError(problems, source=source)
    return obj


def to_mapping(obj: Any) -> Any:
    """Inverse of :func:`from_mapping`: a plain nested dict/list structure (YAML/JSON-serialisable)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj
