"""Argument checks in the scikit-learn manner, used by every part of quickstudy.

Each checker returns the value (normalised: ``numpy`` integers become ``int``) or raises ``ValueError``
naming the owner, the argument, the value and what was expected::

    check_int("Conv4", "hidden", 0)      # ValueError: Conv4: hidden must be a positive integer, got 0

``owner`` may be empty, for messages that name the argument alone.
"""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Iterable

__all__ = ["check_int", "check_number", "check_bool", "check_choice", "check_int_sequence", "check_int_range",
           "int_argument"]


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: Any, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """An integer ``>= minimum`` (``None`` too with ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{_prefix(owner)}{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_number(owner: str, name: str, value: Any, *, positive: bool = True, allow_zero: bool = False,
                 allow_none: bool = False) -> float | None:
    """A finite number; ``> 0`` when ``positive`` (``>= 0`` with ``allow_zero``)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0 or (allow_zero and value == 0)
    if not ok:
        what = "a finite number"
        if positive:
            what = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{_prefix(owner)}{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_prefix(owner)}{name} must be True or False, got {value!r}")
    return value


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a dict's keys
        ok = False
    if not ok:
        raise ValueError(f"{_prefix(owner)}{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_int_sequence(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """A non-empty sequence of positive integers (one integer counts as a sequence of one)."""
    if _is_int(value):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if not items or any(not _is_int(v) or v < 1 for v in items):
        raise ValueError(f"{_prefix(owner)}{name} must be a non-empty list of positive integers, got {value!r}")
    return tuple(int(v) for v in items)


def check_int_range(owner: str, name: str, value: Any, minimum: int = 1) -> tuple[int, int]:
    """``5`` -> ``(5, 5)``; ``(3, 7)`` -> ``(3, 7)`` (inclusive, low <= high); each end ``>= minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{_prefix(owner)}{name} must be an integer or a (low, high) pair, got {value!r}")
        low = check_int(owner, f"{name}[0]", value[0], minimum)
        high = check_int(owner, f"{name}[1]", value[1], minimum)
        if low > high:
            raise ValueError(f"{_prefix(owner)}{name} range must have low <= high, got {value!r}")
        return low, high
    single = check_int(owner, name, value, minimum)
    return single, single


def int_argument(minimum: int = 1):
    """An ``argparse`` ``type=`` for a command-line count (``--steps``, ``--episodes``, ``--trials``, ...): an integer
    ``>= minimum``, else argparse's one-line usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
