"""Validation and parsing of configuration values.

Every primitive validates its configuration in its constructor with these helpers, so a bad
value fails at construction with a ``ValueError`` naming the field, never later mid-call.
Human-friendly forms are accepted where the guide uses them: durations such as ``"30s"``,
``"250ms"``, ``"2m"`` and ratios such as ``"50%"``.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "parse_count",
    "parse_duration_s",
    "parse_ratio",
    "require_non_negative",
    "require_positive",
]

_DURATION_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(us|ms|s|m|h)\s*$")
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*%\s*$")


def _finite(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{field}: must be a number, got NaN")
    return float(value)


def require_positive(field: str, value: float, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float if it is > 0 (and finite unless ``allow_inf``)."""
    number = _finite(field, value)
    if number <= 0:
        raise ValueError(f"{field}: must be > 0, got {value!r}")
    if math.isinf(number) and not allow_inf:
        raise ValueError(f"{field}: must be finite, got {value!r}")
    return number


def require_non_negative(field: str, value: float, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float if it is >= 0 (and finite unless ``allow_inf``)."""
    number = _finite(field, value)
    if number < 0:
        raise ValueError(f"{field}: must be >= 0, got {value!r}")
    if math.isinf(number) and not allow_inf:
        raise ValueError(f"{field}: must be finite, got {value!r}")
    return number


def parse_duration_s(
    field: str, value: float | str, *, allow_zero: bool = False, maximum_s: float | None = None
) -> float:
    """Seconds from a number (already seconds) or a string like ``"30s"``, ``"250ms"``, ``"2m"``.

    A bare number in a string (``"30"``) is rejected: a duration without a unit is ambiguous.
    ``maximum_s`` is an inclusive upper limit.
    """
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(
                f"{field}: malformed duration {value!r}; expected a number with a unit "
                f"(us, ms, s, m, h), e.g. '30s' or '250ms'"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
    else:
        seconds = _finite(field, value)
    if allow_zero:
        seconds = require_non_negative(field, seconds)
    else:
        seconds = require_positive(field, seconds)
    if maximum_s is not None and seconds > maximum_s:
        raise ValueError(f"{field}: at most {maximum_s:g}s, got {value!r}")
    return seconds


def parse_ratio(field: str, value: float | str) -> float:
    """A ratio in [0, 1] from a float or a percentage string such as ``"50%"``."""
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match is None:
            raise ValueError(f"{field}: malformed percentage {value!r}; expected e.g. '50%'")
        ratio = float(match.group(1)) / 100.0
    else:
        ratio = _finite(field, value)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{field}: must be between 0 and 1 (0% and 100%), got {value!r}")
    return ratio


def parse_count(field: str, value: int | str, *, minimum: int = 1) -> int:
    """An integer >= ``minimum`` from an int or a decimal string."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ValueError(f"{field}: expected an integer, got {value!r}")
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field}: must be >= {minimum}, got {value}")
    return value
