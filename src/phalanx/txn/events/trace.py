"""Reconstructing a choreographed flow: the guide's "hard to debug" answered.

:func:`trace` collects, from the SQLite databases of the services involved, every event with
a given correlation id (from each ``outbox``) and every handling of one (from each
``inbox``), and orders them into a timeline. Each line says which service emitted or handled
which event, and which event caused it, so the flow reads as a chain (or a tree when one
event fans out).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TraceLine", "trace"]


@dataclass(frozen=True, slots=True)
class TraceLine:
    at_s: float
    what: str  # "emitted" or "handled"
    service: str
    event_type: str
    event_id: str
    causation_id: str = ""
    depth: int = 0


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def trace(correlation_id: str, databases: Iterable[str | Path]) -> list[TraceLine]:
    """The timeline of one flow across the given service databases, oldest first."""
    lines: list[TraceLine] = []
    for path in databases:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if _table_exists(conn, "outbox"):
                for at_s, service, type_, event_id, cause in conn.execute(
                    "SELECT occurred_at_s, service, type, id, causation_id FROM outbox "
                    "WHERE correlation_id = ?",
                    (correlation_id,),
                ):
                    lines.append(TraceLine(at_s, "emitted", service, type_, event_id, cause))
            if _table_exists(conn, "inbox"):
                for at_s, consumer, type_, event_id in conn.execute(
                    "SELECT handled_at_s, consumer, type, event_id FROM inbox "
                    "WHERE correlation_id = ?",
                    (correlation_id,),
                ):
                    lines.append(TraceLine(at_s, "handled", consumer, type_, event_id))
        finally:
            conn.close()
    depth_of: dict[str, int] = {}
    emitted = {line.event_id: line for line in lines if line.what == "emitted"}

    def depth(event_id: str, seen: int = 0) -> int:
        if event_id in depth_of:
            return depth_of[event_id]
        line = emitted.get(event_id)
        result = 0
        if line is not None and line.causation_id in emitted and seen < len(emitted):
            result = depth(line.causation_id, seen + 1) + 1
        depth_of[event_id] = result
        return result

    lines = [
        TraceLine(
            line.at_s,
            line.what,
            line.service,
            line.event_type,
            line.event_id,
            line.causation_id,
            depth(line.event_id),
        )
        for line in lines
    ]
    lines.sort(key=lambda line: (line.at_s, line.depth, line.what != "emitted"))
    return lines
