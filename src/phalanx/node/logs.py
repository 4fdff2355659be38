"""Structured logs for a node process: one line per record on stderr, as text or JSON.

:func:`configure_logging` installs one handler on the root logger (replacing one it installed
before, leaving others alone), so every library logger (``phalanx.*``, ``uvicorn.*``) writes
through it. Each record carries these fields:

* ``ts``: the time, ISO 8601 in UTC with milliseconds (``2026-11-26T06:02:03.123Z``);
* ``level``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``;
* ``logger``: the logger's name (``phalanx.node.driver``);
* ``node_id``: the node this process runs;
* ``msg``: the formatted message;
* every ``extra={...}`` field the call passed, under its own name;
* ``exc``: the traceback, when the record has one.

``--log-format json`` writes each record as one JSON object; the default ``text`` form is for
people: ``ts LEVEL logger [node N] msg key=value ...``. Messages and extra values are cut to
``MSG_CHARS_MAX`` and ``EXTRA_CHARS_MAX`` characters so one runaway value cannot flood the
log; values JSON cannot hold are written as their ``str()``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Final, Literal, TextIO

__all__ = [
    "EXTRA_CHARS_MAX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MSG_CHARS_MAX",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
#: A message longer than this is cut (ending in ``...``).
MSG_CHARS_MAX: Final = 8192
#: An extra field's value longer than this (as text) is cut.
EXTRA_CHARS_MAX: Final = 1024

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_FIELDS: Final = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
        "message",
        "asctime",
        "node_id",
        "color_message",  # uvicorn's coloured copy of the message
        "taskName",
    }
)


def _cut(text: str, chars_max: int) -> str:
    return text if len(text) <= chars_max else text[: chars_max - 3] + "..."


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _plain(value: object) -> object:
    """A value JSON can hold as it is, or its text, cut to ``EXTRA_CHARS_MAX``."""
    if isinstance(value, bool | int | float | None):
        return value
    return _cut(value if isinstance(value, str) else str(value), EXTRA_CHARS_MAX)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        key: _plain(value)
        for key, value in vars(record).items()
        if key not in _RECORD_FIELDS and not key.startswith("_")
    }


class _NodeField(logging.Filter):
    """Stamps every record with the node's id (``node_id``)."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``node_id``, ``msg``,
    the extras, and ``exc`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node_id": getattr(record, "node_id", None),
            "msg": _cut(record.getMessage(), MSG_CHARS_MAX),
        }
        for key, value in _extras(record).items():
            line.setdefault(key, value)  # an extra never hides a standard field
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [node N] msg key=value ...``, then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        node_id = getattr(record, "node_id", None)
        parts = [_timestamp(record), f"{record.levelname:<7}", record.name]
        if node_id is not None:
            parts.append(f"[node {node_id}]")
        parts.append(_cut(record.getMessage(), MSG_CHARS_MAX))
        parts.extend(f"{key}={value}" for key, value in _extras(record).items())
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class _NodeHandler(logging.StreamHandler[TextIO]):
    """Marks the handler :func:`configure_logging` installed, so a second call replaces it."""


def configure_logging(
    node_id: int,
    *,
    log_format: LogFormat = "text",
    level: str = "info",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every record at ``level`` or above to ``stream`` (stderr) in ``log_format``.

    Returns the handler installed on the root logger. Raises ``ValueError`` naming the field
    for an unknown format or level.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"log_format: expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}"
        )
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = _NodeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_NodeField(node_id))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _NodeHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
