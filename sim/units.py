"""Durations with units, as written in scenario files (``"15m"``, ``"250ms"``, ``"1h30m"``).

Inside the project every duration is a float of seconds and its name ends in ``_s``. Scenario
files must spell the unit out; Python callers may pass plain seconds.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, ValidationInfo

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|m|h|d)")
_WHOLE = re.compile(r"^\s*(-)?\s*((?:(?:\d+(?:\.\d*)?|\.\d+)\s*(?:us|ms|s|m|h|d)\s*)+)$")

EXPECTED = "a duration string with a unit (us, ms, s, m, h, d), like '250ms', '15m' or '1h30m'"
#: the longest duration a scenario may name: 100 years (longer ones are typos, or overflow)
MAX_DURATION_S = 100 * 365 * 86400.0


def parse_duration(text: str) -> float:
    """Return the seconds in ``text``; raise ``ValueError`` naming what was expected."""
    if len(text) > 1000:
        raise ValueError(f"expected {EXPECTED}, got a string of {len(text)} characters")
    match = _WHOLE.match(text)
    if not match:
        raise ValueError(f"expected {EXPECTED}, got {text!r}")
    seconds = sum(float(n) * _UNITS_S[u] for n, u in _PART.findall(match.group(2)))
    if not seconds <= MAX_DURATION_S:
        raise ValueError(f"expected a duration of at most 100 years, got {text[:40]!r}")
    return -seconds if match.group(1) else seconds


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration`, choosing the largest unit that keeps the number short."""
    if seconds is None or (isinstance(seconds, float) and math.isinf(seconds)):
        return seconds
    sign = "-" if seconds < 0 else ""
    s = abs(float(seconds))
    if s == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms", "us"):
        value = s / _UNITS_S[unit]
        if value >= 1 and (value == round(value) or unit in ("ms", "us")):
            return f"{sign}{_num(value)}{unit}"
    return f"{sign}{_num(s)}s"


def _num(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _coerce(signed: bool):
    def validate(value: Any, info: ValidationInfo) -> float:
        from_file = bool(info.context and info.context.get("from_file"))
        if isinstance(value, str):
            seconds = parse_duration(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected {EXPECTED}, got {value!r}")
        elif from_file:
            # a bare number in a file is ambiguous (seconds? minutes?): make the author say
            raise ValueError(f"expected {EXPECTED}, got the bare number {value!r}")
        else:
            seconds = float(value)
            if not abs(seconds) <= MAX_DURATION_S:
                raise ValueError(f"expected a duration of at most 100 years, got {value!r}")
        if not signed and seconds < 0:
            raise ValueError(f"expected a duration that is not negative, got {value!r}")
        return seconds

    return validate


_serialize = PlainSerializer(format_duration, return_type=str, when_used="json")

#: A non-negative duration, seconds in Python, a unit string in files.
Duration = Annotated[float, BeforeValidator(_coerce(signed=False)), _serialize]
#: A duration that may be negative (clock skew).
SignedDuration = Annotated[float, BeforeValidator(_coerce(signed=True)), _serialize]


def format_number(value) -> str:
    """A number for tables and prose: ``–`` when missing, thousands separated when large,
    three significant digits otherwise."""
    if value is None:
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if abs(value) >= 100 or value.is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}"
