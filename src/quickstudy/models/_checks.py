"""Argument checks in the scikit-learn manner: the error names the owner, the argument, the value and
what was expected. Shared by ``quickstudy.models`` and ``quickstudy.algorithms``."""

from __future__ import annotations

import math
from typing import Iterable

__all__ = ["check_int", "check_number", "check_bool", "check_choice", "check_int_sequence"]


def check_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    return value


def check_number(owner: str, name: str, value: object, *, positive: bool = True, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0 or (allow_zero and value == 0)
    if not ok:
        what = "a finite number"
        if positive:
            what = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    return float(value)


def check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def check_choice(owner: str, name: str, value: object, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value  # type: ignore[return-value]


def check_int_sequence(owner: str, name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        items = ()
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(f"{owner}: {name} must be a non-empty list of positive integers, got {value!r}")
    return items
