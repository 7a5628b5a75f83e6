"""Stage results: frozen dataclasses that each stage returns and that write (and read back) their JSON files.

A field renamed in code fails where the result is built or read (and under mypy), not in a report three stages
later. `to_json()` gives the on-disk form; `from_json()` rebuilds the typed result from it, nested results
included. A field made with `optional()` is left out of the JSON while it is None (a section a run may not have,
e.g. the segmenter's), so files keep the keys their readers know.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from motfm_core.errors import BadInput

__all__ = ["Result", "optional"]

R = TypeVar("R", bound="Result")


def optional(default: Any = None) -> Any:
    """A result field that is left out of the JSON while it is None."""
    return dataclasses.field(default=default, metadata={"omit_if_none": True})


def _plain(value: Any) -> Any:
    """The JSON form of a field value."""
    if isinstance(value, Result):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _typed(tp: Any, value: Any) -> Any:
    """`value` read from JSON as the annotated type `tp` (results, lists and dicts of them; others as they are)."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], value) if len(inner) == 1 else value
    if isinstance(tp, type) and issubclass(tp, Result):
        return tp.from_json(value)
    if origin in (list, tuple) and args:
        return [_typed(args[0], v) for v in value]
    if origin is dict and len(args) == 2:
        return {k: _typed(args[1], v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of the stage results (subclasses are frozen dataclasses)."""

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON types (nested results included)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_if_none"):
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        """The typed result from its JSON form; keys this class does not know are ignored, missing ones raise."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: _typed(hints[k], v) for k, v in data.items() if k in known})
        except TypeError as e:  # a key the class needs is missing: name the class, not just the argument
            raise BadInput(f"{cls.__name__}: {e}") from None
