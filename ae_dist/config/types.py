"""The config's field types: converting a YAML or command-line value by its field's declared type.

``bool``, ``int``, ``float``, ``str``, ``tuple[int, ...]`` and ``Literal["a", "b", ...]`` (a fixed
set of words: the field's choices). A value that cannot be converted raises ValueError saying
what it is not; `type_word` says what the field takes, for the fix half of the error line.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any, Literal, get_args, get_origin

from ae_dist.errors import QUOTE_LIMIT, printable


class _Short(reprlib.Repr):
    """A value's repr cut to a few items per level and three levels: a huge value costs nothing to quote."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 600:  # ~180 digits; repr() refuses beyond 4,300
            return f"<an integer of {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


_SHORT = _Short()
_SHORT.maxstring = _SHORT.maxother = QUOTE_LIMIT
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxlevel = 3


def choices(kind: Any) -> tuple[str, ...]:
    """The values a ``Literal[...]`` field allows; () for any other type."""
    return get_args(kind) if get_origin(kind) is Literal else ()


def shown(value: Any) -> str:
    """A user's value as a message quotes it: one line, short, however large the value is."""
    return printable(_SHORT.repr(value), QUOTE_LIMIT)


def type_word(kind: Any) -> str:
    """What a field takes, in words: 'an integer', 'a number', 'true or false', ..."""
    if choices(kind):
        return "one of " + " | ".join(c for c in choices(kind) if c) + (" or empty" if "" in choices(kind) else "")
    if get_origin(kind) is tuple:
        return "a list of integers, e.g. 128,64"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]


def convert(value: Any, kind: Any) -> Any:
    """Convert a YAML or command-line value to the declared type, or raise ValueError saying what it is not."""
    if get_origin(kind) is tuple:
        items = value
        if isinstance(value, str):
            items = [v for v in value.strip("[]()").replace(" ", "").split(",") if v]
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{shown(value)} is not a list of integers")
        return tuple(convert(v, get_args(kind)[0]) for v in items)
    if choices(kind):
        return _choice(value, choices(kind))
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"{shown(value)} is not true or false")
    if kind is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{shown(value)} is not an integer")
        try:
            return int(value) if not isinstance(value, str) else int(value.replace("_", ""), 0)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{shown(value)} is not an integer") from None
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{shown(value)} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{shown(value)} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{shown(value)} is not a finite number")
        return number
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"a {type(value).__name__} is not text")
        return "" if value is None else str(value)
    raise TypeError(f"unsupported field type {kind}")  # a bug, not bad input


def _choice(value: Any, allowed: tuple[str, ...]) -> str:
    """A choice as text; YAML 1.1 reads ``off``/``on`` as booleans, so those map back to the word the field has."""
    if isinstance(value, bool):
        words = ("on", "true", "yes") if value else ("off", "false", "no")
        return next((word for word in words if word in allowed), str(value).lower())
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ValueError(f"a {type(value).__name__} is not one of the choices")
    return str(value)  # checked against the choices by `validate`, with the other values
