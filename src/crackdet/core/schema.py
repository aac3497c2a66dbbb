"""A typed schema for a YAML tree, checked whole: every problem is found, one line each.

A schema is a tree of frozen dataclasses whose fields carry their rules (:func:`rule`); every
key is required. :func:`build` walks a loaded YAML tree against it and returns the typed record,
or :data:`INVALID` after appending each problem to a :class:`Problems` list. Nothing here knows
crackdet's sections (``crackdet.core.params`` does).

Supported field types: ``bool``, ``int``, ``float``, ``str``; ``tuple[X, ...]`` (a non-empty YAML
list); ``float | str`` (a number within the bounds, or one of the words in ``choices``); a nested
record; ``dict[str, float]`` (named numbers); ``dict[str, A | B]`` (named records, each chosen by
its ``kind``: the first field of each record, whose ``choices`` list its kinds); ``X | None`` (YAML
null, or an X); ``tuple[Record, ...]`` (a non-empty list of records).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
import types
import typing
from dataclasses import field
from typing import Any

from crackdet.core.errors import CrackdetError


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()  # what a check returns after recording its problem


class Problems(list[str]):
    """The problems found so far, in the order of the tree, each one line naming its key."""

    def raise_if_any(self, prefix: str) -> None:
        if self:
            raise CrackdetError("\n".join(f"{prefix}{problem}" for problem in self))


def rule(
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    span: bool = False,
    names: tuple[str, str] | None = None,
    what: str = "",
) -> Any:
    """A schema field with its rules; every key is required, so there is no default.
    ``span`` (lists): exactly ``[low, high]`` with low <= high. ``names``/``what`` (mappings): a
    regular expression the keys must match and what it asks for, and what one entry is called
    in messages."""
    meta = {"ge": ge, "le": le, "gt": gt, "lt": lt, "choices": choices, "span": span}
    return field(metadata={**meta, "names": names, "what": what})


def type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# A number as a person writes it: YAML 1.1 (PyYAML) reads ``1e-4`` as a string, because its
# floats need a dot; DVC's YAML 1.2 reads it as a number. Both must mean the same here.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

_BOUNDS = (
    ("ge", lambda v, b: v >= b, ">="),
    ("gt", lambda v, b: v > b, ">"),
    ("le", lambda v, b: v <= b, "<="),
    ("lt", lambda v, b: v < b, "<"),
)


def check_value(
    key: str, tp: Any, value: Any, meta: typing.Mapping[str, Any], problems: Problems
) -> Any:
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, problems)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin is dict:
        item = typing.get_args(tp)[1]
        if item is float:
            return _check_numbers(key, value, meta, problems)
        return _check_named(key, item, value, meta, problems)
    if origin is types.UnionType:
        options = typing.get_args(tp)
        if type(None) in options:  # ``X | None``: YAML null, or an X
            if value is None:
                return None
            rest = functools.reduce(operator.or_, (o for o in options if o is not type(None)))
            return check_value(key, rest, value, meta, problems)
        if all(dataclasses.is_dataclass(o) for o in options):
            return _check_kind(key, options, value, problems)
        return _check_number_or_word(key, options, value, meta, problems)
    if origin is tuple:  # tuple[X, ...]: a YAML list of X
        item = typing.get_args(tp)[0]
        if not isinstance(value, list) or not value:
            problems.append(f"{key} must be a non-empty list, got {value!r}")
            return INVALID
        items = [check_value(f"{key}[{i}]", item, v, meta, problems) for i, v in enumerate(value)]
        if INVALID in items:
            return INVALID
        if meta.get("span") and (len(items) != 2 or items[0] > items[1]):
            problems.append(f"{key} must be a range [low, high] with low <= high; got {items}")
            return INVALID
        return tuple(items)
    return _check_scalar(key, tp, value, meta, problems)


def _check_scalar(
    key: str, tp: Any, value: Any, meta: typing.Mapping[str, Any], problems: Problems
) -> Any:
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    # bool is an int subclass in Python; YAML `true` must never pass as a count.
    ok = (
        isinstance(value, bool)
        if tp is bool
        else isinstance(value, tp) and not isinstance(value, bool)
        if tp in (int, str)
        else isinstance(value, (int, float)) and not isinstance(value, bool)
    )
    if not ok:
        problems.append(f"{key} must be {type_name(tp)}, got {value!r} ({type(value).__name__})")
        return INVALID
    if tp is float:
        value = float(value)
    choices = meta.get("choices")
    if choices and value not in choices:
        problems.append(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        return INVALID
    for bound, test, word in _BOUNDS:
        limit = meta.get(bound)
        if limit is not None and not test(value, limit):
            problems.append(f"{key} must be {word} {limit}; got {value!r}")
            return INVALID
    return value


def _check_number_or_word(
    key: str,
    options: tuple[type, ...],
    value: Any,
    meta: typing.Mapping[str, Any],
    problems: Problems,
) -> Any:
    """``float | str``: a number within the bounds, or one of the words in ``choices``."""
    words = meta.get("choices") or ()
    if isinstance(value, str) and value in words:
        return value
    number = next(o for o in options if o in (int, float))
    found = Problems()
    checked = check_value(key, number, value, {**meta, "choices": None}, found)
    if not found:
        return checked
    if isinstance(value, int | float) and not isinstance(value, bool):
        problems += found  # a number out of range: the bound says it
    else:
        problems.append(f"{key} must be a number or {' or '.join(words)}; got {value!r}")
    return INVALID


def _check_named(
    key: str, item: Any, value: Any, meta: typing.Mapping[str, Any], problems: Problems
) -> Any:
    """``name: record`` entries, at least one; names match ``meta["names"]``."""
    what = meta.get("what") or "entry"
    if not isinstance(value, dict) or not value:
        problems.append(f"{key} must name at least one {what} (name: {{kind: …, …}})")
        return INVALID
    pattern, wanted = meta.get("names") or (r".+", "")
    entries = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not re.fullmatch(pattern, name):
            problems.append(f"{key}: {what} name {name!r} must be {wanted}")
            entries[name] = INVALID
            continue
        entries[name] = check_value(f"{key}.{name}", item, raw, {}, problems)
    return INVALID if INVALID in entries.values() else entries


def _check_numbers(key: str, value: Any, meta: typing.Mapping[str, Any], problems: Problems) -> Any:
    """``name: number`` pairs (may be empty)."""
    if not isinstance(value, dict):
        what = meta.get("what") or "entry"
        problems.append(f"{key} must be a mapping of {what} names to numbers ({{}} for none)")
        return INVALID
    numbers = {
        str(name): check_value(f"{key}.{name}", float, v, meta, problems)
        for name, v in value.items()
    }
    return INVALID if INVALID in numbers.values() else numbers


def kinds_of(options: tuple[type, ...]) -> dict[str, type]:
    """Each kind a union of records allows, and its record (the first field is ``kind``)."""
    return {
        kind: cls
        for cls in options
        for kind in dataclasses.fields(cls)[0].metadata["choices"]  # type: ignore[arg-type]
    }


def _check_kind(key: str, options: tuple[type, ...], value: Any, problems: Problems) -> Any:
    """One of several record types, chosen by the value's ``kind``."""
    by_kind = kinds_of(options)
    kind = value.get("kind") if isinstance(value, dict) else None
    if kind not in by_kind:
        problems.append(f"{key}.kind must be one of {', '.join(by_kind)}; got {kind!r}")
        return INVALID
    return build(by_kind[kind], value, key, problems)


def build_fields(cls: type, raw: Any, prefix: str, problems: Problems) -> dict[str, Any] | None:
    """Each field of ``cls`` checked (INVALID where it has a problem); None when ``raw`` is no
    mapping."""
    where = prefix or "the top level"
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    dotted = (prefix + ".") if prefix else ""
    for unknown in sorted(set(raw) - set(fields), key=str):
        problems.append(
            f"unknown key {dotted}{unknown} (known keys in {where}: {', '.join(fields)})"
        )
    values = {}
    for name, fld in fields.items():
        if name not in raw:
            problems.append(f"missing key {dotted}{name}")
            values[name] = INVALID
            continue
        values[name] = check_value(
            f"{dotted}{name}", hints[name], raw[name], fld.metadata, problems
        )
    return values


def build(cls: type, raw: Any, prefix: str, problems: Problems) -> Any:
    """The record ``cls`` from ``raw``, or INVALID with its problems recorded. A record class
    may say what its fields' rules cannot, in a method ``check(self, key) -> list[str]``."""
    count = len(problems)
    values = build_fields(cls, raw, prefix, problems)
    if values is None or len(problems) > count:
        return INVALID
    record = cls(**values)
    found = record.check(prefix) if hasattr(record, "check") else []
    problems += found
    return INVALID if found else record
