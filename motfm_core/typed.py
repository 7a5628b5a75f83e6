"""Dataclasses from untyped dicts (deployment parameters, --set values, saved JSON): unknown keys and values of
the wrong type or outside a `Literal`'s choices are refused naming the key; and a stable hash of configs, which
keys every cached stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import asdict, fields
from typing import Any, ClassVar, Literal, Protocol, TypeVar, get_args

from motfm_core.errors import BadInput

__all__ = ["check", "check_choices", "config_hash", "did_you_mean", "from_dict"]


class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Any]]


T = TypeVar("T", bound=_Dataclass)


_SCALARS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(annotation: str, value: Any, key: str) -> Any:
    """`value` as the field's declared type (int -> float allowed, JSON lists -> tuples), else a ValueError
    naming the key, the type it needs and the value it got."""
    def one(kind: str, v: Any) -> Any:
        want = _SCALARS[kind]
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, want) and not (want is not bool and isinstance(v, bool)):
            return v
        example = {"int": 10, "float": 0.5, "str": "x", "bool": "true"}[kind]
        raise BadInput(f"{key} must be {'a' if kind != 'int' else 'an'} {kind}, got {v!r} "
                       f"({type(v).__name__}); e.g. --set {key}={example}")

    if annotation in _SCALARS:
        return one(annotation, value)
    if annotation.startswith("tuple[") and annotation.endswith(", ...]"):
        kind = annotation[len("tuple["):-len(", ...]")]
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"{key} must be a list of {kind}, got {value!r}; e.g. --set {key}=[1,2]")
        return tuple(one(kind, v) for v in value)
    return value  # other annotations are checked by the config's validate()


def did_you_mean(unknown: list[str], names: set[str], prefix: str = "") -> str:
    """' (did you mean `train.steps`?)' for the known names closest to the unknown ones (difflib's ratio >= 0.6),
    else ''."""
    import difflib

    close = [m for u in unknown for m in difflib.get_close_matches(u, sorted(names), n=1)]
    return f" (did you mean {', '.join(f'`{prefix}.{m}`' if prefix else f'`{m}`' for m in close)}?)" if close else ""


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `values`, raising on keys it does not have and on values of the wrong type."""
    values = dict(values or {})
    names = {f.name for f in fields(cls)}
    label = where or cls.__name__
    unknown = sorted(set(values) - names)
    if unknown:
        raise BadInput(f"{label}: unknown parameter(s) {unknown}{did_you_mean(unknown, names, label)}; valid ones "
                       f"are {sorted(names)}")
    for f in fields(cls):
        if f.name in values:
            values[f.name] = _coerce(str(f.type), values[f.name], f"{label}.{f.name}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def config_hash(*configs: Any) -> str:
    """Stable short hash of one or more dataclass configs (used to key cached stages)."""
    payload = json.dumps([asdict(c) if dataclasses.is_dataclass(c) and not isinstance(c, type) else c
                          for c in configs], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def check(cond: bool, msg: str) -> None:
    """A ValueError with `msg` unless `cond` (validate() methods: each message names the key and the fix)."""
    if not cond:
        raise BadInput(msg)


def check_choices(obj: Any, section: str) -> None:
    """Refuse a field whose value is not one of its `Literal` type's choices, naming the key and the choices."""
    hints = typing.get_type_hints(type(obj))  # resolved in the class's own module
    for f in fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        # of the same type too: 3.0 == 3 would pass as a choice of [2, 3] and fail later as a float
        if typing.get_origin(tp) is Literal and not any(value == c and type(value) is type(c) for c in get_args(tp)):
            kind = f" ({type(value).__name__})" if value in get_args(tp) else ""
            raise BadInput(f"{section}.{f.name} must be one of {list(get_args(tp))}, got {value!r}{kind}")
