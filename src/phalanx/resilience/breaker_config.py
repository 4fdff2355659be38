"""Circuit-breaker configuration: states, transitions, limits and the parsed settings.

This module owns :class:`BreakerState`, :class:`Transition`, the legal edges between
states, the named limits of every setting, and :class:`BreakerConfig`, including
:meth:`BreakerConfig.from_mapping`, which reads the guide's example as written
(``error_threshold: 50%``, ``consecutive_failures: 10``, ``timeout: 30s``,
``half_open_requests: 3``). Invalid values raise ``ValueError`` naming the field.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

from phalanx.resilience.breaker_window import (
    WINDOW_SIZE_CALLS_MAX,
    WINDOW_SIZE_S_MAX,
)
from phalanx.resilience.config import parse_count, parse_duration_s, parse_ratio

__all__ = [
    "CONFIG_TEXT_CHARS_MAX",
    "CONSECUTIVE_FAILURES_MAX",
    "HALF_OPEN_REQUESTS_MAX",
    "LEGAL_EDGES",
    "MANUAL_REASONS",
    "MINIMUM_CALLS_MAX",
    "OPEN_TIMEOUT_S_MAX",
    "REFRESH_INTERVAL_S_MAX",
    "SLOW_CALL_DURATION_S_MAX",
    "BreakerConfig",
    "BreakerState",
    "Transition",
]

#: Longest open period: a breaker that should stay open longer wants ``force_open()``.
OPEN_TIMEOUT_S_MAX: Final = 86_400.0
#: Most probes one half-open episode admits.
HALF_OPEN_REQUESTS_MAX: Final = 1_000
#: Largest ``consecutive_failures`` and ``minimum_calls``.
CONSECUTIVE_FAILURES_MAX: Final = 1_000_000
MINIMUM_CALLS_MAX: Final = 1_000_000
#: Longest slow-call threshold.
SLOW_CALL_DURATION_S_MAX: Final = 3_600.0
#: Longest period between two reads of a shared store.
REFRESH_INTERVAL_S_MAX: Final = 3_600.0
#: Longest configuration text ``from_config`` parses.
CONFIG_TEXT_CHARS_MAX: Final = 10_000


class BreakerState(enum.Enum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN

#: The edges automatic transitions may take.
LEGAL_EDGES: Final = frozenset(
    {(_CLOSED, _OPEN), (_OPEN, _HALF_OPEN), (_HALF_OPEN, _CLOSED), (_HALF_OPEN, _OPEN)}
)

#: Reasons of transitions that do not have to follow :data:`LEGAL_EDGES`.
MANUAL_REASONS: Final = frozenset({"reset", "forced_open", "disabled", "remote"})


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change: ``reason`` is why (``"failure_rate"``, ``"slow_call_rate"``,
    ``"consecutive_failures"``, ``"open_timeout"``, ``"probes_succeeded"``,
    ``"probe_failed"``, ``"probe_slow"``, or one of :data:`MANUAL_REASONS`)."""

    from_state: BreakerState
    to_state: BreakerState
    at_s: float
    reason: str


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

_NULLS = frozenset({"none", "null", "~", "off"})


def _optional(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in _NULLS:
        return None
    return value


def _ratio(field: str, value: object) -> float:
    ratio = parse_ratio(field, cast(float, value))
    if ratio <= 0.0:
        # A zero threshold would trip on the first call, success or not.
        raise ValueError(f"{field}: must be > 0%, got {value!r}")
    return ratio


def _count(field: str, value: object, maximum: int) -> int:
    count = parse_count(field, cast(int, value))
    if count > maximum:
        raise ValueError(f"{field}: must be <= {maximum}, got {count}")
    return count


def _duration(field: str, value: object, maximum_s: float) -> float:
    seconds = parse_duration_s(field, cast(float, value))
    if seconds > maximum_s:
        raise ValueError(f"{field}: must be <= {maximum_s:g} s, got {seconds:g} s")
    return seconds


def _whole_seconds(field: str, value: object) -> int:
    if isinstance(value, str) and not value.strip().isdigit():
        seconds = parse_duration_s(field, value)
        if seconds != math.floor(seconds):
            raise ValueError(f"{field}: must be whole seconds, got {value!r}")
        value = int(seconds)
    return _count(field, value, WINDOW_SIZE_S_MAX)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The validated settings of a breaker. Defaults follow the guide's example.

    Every field accepts what ``from_config`` accepts (``"50%"``, ``"30s"``, ``"10"``) and is
    normalised to the annotated type; anything invalid raises ``ValueError`` naming it.
    """

    failure_rate_threshold: float = 0.5
    consecutive_failures: int | None = 10
    open_timeout_s: float = 30.0
    half_open_requests: int = 3
    window_type: Literal["count", "time"] = "count"
    window_size_calls: int = 100
    window_size_s: int = 60
    minimum_calls: int = 10
    slow_call_duration_s: float | None = None
    slow_call_rate_threshold: float = 1.0
    refresh_interval_s: float = 1.0

    def __post_init__(self) -> None:
        def put(field: str, value: object) -> None:
            object.__setattr__(self, field, value)

        put("failure_rate_threshold", _ratio("failure_rate_threshold", self.failure_rate_threshold))
        consecutive = _optional(self.consecutive_failures)
        if consecutive is not None:
            consecutive = _count("consecutive_failures", consecutive, CONSECUTIVE_FAILURES_MAX)
        put("consecutive_failures", consecutive)
        put("open_timeout_s", _duration("open_timeout_s", self.open_timeout_s, OPEN_TIMEOUT_S_MAX))
        put(
            "half_open_requests",
            _count("half_open_requests", self.half_open_requests, HALF_OPEN_REQUESTS_MAX),
        )
        window_type = self.window_type.strip() if isinstance(self.window_type, str) else None
        if window_type not in ("count", "time"):
            raise ValueError(f"window_type: expected 'count' or 'time', got {self.window_type!r}")
        put("window_type", window_type)
        size_calls = _count("window_size_calls", self.window_size_calls, WINDOW_SIZE_CALLS_MAX)
        put("window_size_calls", size_calls)
        put("window_size_s", _whole_seconds("window_size_s", self.window_size_s))
        minimum = _count("minimum_calls", self.minimum_calls, MINIMUM_CALLS_MAX)
        if window_type == "count" and minimum > size_calls:
            raise ValueError(
                f"minimum_calls: {minimum} can never be reached by a count window of "
                f"window_size_calls={size_calls}"
            )
        put("minimum_calls", minimum)
        slow = _optional(self.slow_call_duration_s)
        if slow is not None:
            slow = _duration("slow_call_duration_s", slow, SLOW_CALL_DURATION_S_MAX)
        put("slow_call_duration_s", slow)
        put(
            "slow_call_rate_threshold",
            _ratio("slow_call_rate_threshold", self.slow_call_rate_threshold),
        )
        put(
            "refresh_interval_s",
            _duration("refresh_interval_s", self.refresh_interval_s, REFRESH_INTERVAL_S_MAX),
        )

    @classmethod
    def from_mapping(cls, config: Mapping[str, object] | str) -> BreakerConfig:
        """Build from a mapping or ``key: value`` lines, accepting the guide's key names.

        The guide's keys map to fields: ``error_threshold`` -> ``failure_rate_threshold``,
        ``timeout`` -> ``open_timeout_s``; ``consecutive_failures`` and
        ``half_open_requests`` keep their names. Field names are accepted as well, and the
        unit-less spellings ``open_timeout``, ``slow_call_duration``, ``refresh_interval``.
        An unknown key, or two keys for one field, raise ``ValueError`` naming the key.
        """
        items = _parse_text(config) if isinstance(config, str) else dict(config)
        fields: dict[str, object] = {}
        for key, value in items.items():
            if not isinstance(key, str):
                raise ValueError(f"{key!r}: configuration keys must be strings")
            field = _CONFIG_KEYS.get(key.strip())
            if field is None:
                known = ", ".join(sorted(_CONFIG_KEYS))
                raise ValueError(f"{key}: unknown circuit breaker setting (known: {known})")
            if field in fields:
                raise ValueError(f"{key}: sets {field}, which another key already set")
            fields[field] = value.strip() if isinstance(value, str) else value
        return cls(**fields)  # type: ignore[arg-type]  # values are validated in __post_init__


_CONFIG_KEYS: Final[Mapping[str, str]] = {
    # The guide's spelling.
    "error_threshold": "failure_rate_threshold",
    "timeout": "open_timeout_s",
    "consecutive_failures": "consecutive_failures",
    "half_open_requests": "half_open_requests",
    # Field names and their unit-less spellings.
    "failure_rate_threshold": "failure_rate_threshold",
    "open_timeout_s": "open_timeout_s",
    "open_timeout": "open_timeout_s",
    "window_type": "window_type",
    "window_size_calls": "window_size_calls",
    "window_size_s": "window_size_s",
    "minimum_calls": "minimum_calls",
    "slow_call_duration_s": "slow_call_duration_s",
    "slow_call_duration": "slow_call_duration_s",
    "slow_call_rate_threshold": "slow_call_rate_threshold",
    "refresh_interval_s": "refresh_interval_s",
    "refresh_interval": "refresh_interval_s",
}


def _parse_text(text: str) -> dict[str, str]:
    """``key: value`` lines (blank lines and ``#`` comments skipped) into a dict."""
    if len(text) > CONFIG_TEXT_CHARS_MAX:
        raise ValueError(f"config: longer than {CONFIG_TEXT_CHARS_MAX} characters")
    items: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"config line {number}: expected 'key: value', got {raw!r}")
        if key in items:
            raise ValueError(f"{key}: given twice (line {number})")
        items[key] = value.strip()
    return items
