"""Client sessions for exactly-once requests (Raft thesis 6.3).

A client registers a session (its id is the index of the registering entry, unique and the
same on every replica), then numbers its requests. The state machine caches each response by
sequence number until the client acknowledges it (``acked_seq``), so a retried request gets
the cached response and is not applied twice.

Bounds: at most ``sessions_max`` sessions (registering one more evicts the least recently used
one), at most ``session_responses_max`` unacknowledged responses per session, and a session
unused for ``session_ttl_ms`` of the leader's time expires. Everything is decided from applied
commands only, so all replicas keep the same sessions.
"""

from __future__ import annotations

from collections import OrderedDict

from phalanx.kv.limits import DEFAULT_LIMITS, Limits
from phalanx.kv.responses import Response

__all__ = ["Session", "SessionTable"]


class Session:
    """One client's session: when it was last used and its unacknowledged responses."""

    __slots__ = ("acked_seq", "client_id", "last_active_ms", "responses")

    def __init__(self, client_id: int, last_active_ms: int) -> None:
        self.client_id = client_id
        self.last_active_ms = last_active_ms
        self.acked_seq = 0
        self.responses: dict[int, Response] = {}

    def forget_below(self, acked_seq: int) -> None:
        for seq in [s for s in self.responses if s < acked_seq]:
            del self.responses[seq]


class SessionTable:
    """The sessions of one state machine, least recently used first."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._sessions: OrderedDict[int, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        """Every session, least recently used first (the order is part of the state)."""
        return list(self._sessions.values())

    def restore(self, session: Session) -> None:
        self._sessions[session.client_id] = session

    def register(self, client_id: int, now_ms: int) -> list[int]:
        """Open a session; returns the ids expired or evicted to make room."""
        gone = self._expire(now_ms)
        while len(self._sessions) >= self._limits.sessions_max:
            evicted, _ = self._sessions.popitem(last=False)
            gone.append(evicted)
        self._sessions[client_id] = Session(client_id, now_ms)
        return gone

    def lookup(self, client_id: int, now_ms: int) -> Session | None:
        """The live session, marked used at ``now_ms``; ``None`` if unknown or expired."""
        session = self._sessions.get(client_id)
        if session is None:
            return None
        if now_ms - session.last_active_ms > self._limits.session_ttl_ms:
            del self._sessions[client_id]
            return None
        session.last_active_ms = now_ms
        self._sessions.move_to_end(client_id)
        return session

    def _expire(self, now_ms: int) -> list[int]:
        gone: list[int] = []
        ttl_ms = self._limits.session_ttl_ms
        while self._sessions:
            client_id, oldest = next(iter(self._sessions.items()))
            if now_ms - oldest.last_active_ms <= ttl_ms:
                break
            del self._sessions[client_id]
            gone.append(client_id)
        return gone
