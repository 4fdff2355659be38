"""``AsyncClient`` and ``Client``: talk to a Phalanx cluster over the client protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Final

from phalanx.client._conn import Address, Connection
from phalanx.errors import (
    BadRequest,
    Indeterminate,
    NotLeader,
    PhalanxError,
    Timeout,
    Unavailable,
)
from phalanx.node.client_protocol import ClientResponse, error_from_body
from phalanx.resilience.deadline import remaining_s
from phalanx.resilience.retry import Retry

__all__ = ["AsyncClient", "Client", "parse_endpoint"]

#: How long one request may wait for its answer; a little longer than the node's own
#: request deadline (5 s), so the node's ``Timeout`` normally arrives first.
REQUEST_TIMEOUT_S: Final = 6.0
CONNECT_TIMEOUT_S: Final = 1.0
#: The whole call, retries included.
TOTAL_TIMEOUT_S: Final = 15.0


def parse_endpoint(endpoint: str | Address) -> Address:
    """``"host:port"`` (or a ``(host, port)`` pair) as an address; ``BadRequest`` if neither."""
    if isinstance(endpoint, tuple):
        host, port = endpoint
        return (str(host), int(port))
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest(f"endpoint {endpoint!r}: expected host:port")
    return (host.strip("[]"), int(port_text))


class AsyncClient:
    """An asyncio client of a Phalanx cluster reachable at ``endpoints``.

    It finds the leader by trying the endpoints in turn and follows ``NotLeader`` answers to
    the leader they name. Reads are retried on any transient failure (a read has no effect).
    Writes are retried only when the failure proves nothing was applied (``NotLeader``, a
    connection that could not be opened or was gone before the request was written): a
    write that was sent and got no answer raises ``Timeout`` or ``Indeterminate``, whose
    outcome is INDETERMINATE. Every call is bounded by ``total_timeout_s``.
    """

    def __init__(
        self,
        endpoints: Iterable[str | Address],
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
        attempts_max: int = 50,
    ) -> None:
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        if not self.endpoints:
            raise ValueError("endpoints: at least one is required")
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._leader: Address | None = None
        self._turn = 0
        self._connections: dict[Address, Connection] = {}
        common = {
            "attempts_max": attempts_max,
            "base_delay_s": 0.02,
            "max_delay_s": 0.5,
            "total_timeout_s": total_timeout_s,
        }
        self._read_retry = Retry(name="phalanx.client.read", **common)  # type: ignore[arg-type]
        self._write_retry = Retry(
            name="phalanx.client.write",
            idempotent=False,
            **common,  # type: ignore[arg-type]
        )
        self._closed = False

    @property
    def leader(self) -> Address | None:
        """The client address of the node believed to lead, or None."""
        return self._leader

    async def put(self, key: bytes, value: bytes) -> int:
        """Write ``key`` = ``value``; returns the write's revision once it is applied."""
        response = await self._write_retry.acall(
            self._attempt, "put", key, value, linearizable=True
        )
        return response.revision

    async def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None:
        """The value of ``key`` or None; ``linearizable=False`` allows a stale local read."""
        response = await self._read_retry.acall(
            self._attempt, "get", key, None, linearizable=linearizable
        )
        return response.value

    async def aclose(self) -> None:
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            await connection.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- one attempt ------------------------------------------------------------------------

    def _target(self) -> Address:
        if self._leader is not None:
            return self._leader
        return self.endpoints[self._turn % len(self.endpoints)]

    def _forget(self, address: Address) -> None:
        """``address`` failed: stop believing it leads and move to the next endpoint."""
        if self._leader == address:
            self._leader = None
        if self.endpoints[self._turn % len(self.endpoints)] == address:
            self._turn += 1

    def _budget_s(self, limit_s: float) -> float:
        left = remaining_s()
        return limit_s if left is None else max(0.001, min(limit_s, left))

    async def _connection(self, address: Address) -> Connection:
        connection = self._connections.get(address)
        if connection is not None and connection.usable:
            return connection
        if connection is not None:
            await connection.aclose()
        connection = Connection(address)
        await connection.connect(self._budget_s(self.connect_timeout_s))
        self._connections[address] = connection
        return connection

    async def _attempt(
        self, op: str, key: bytes, value: bytes | None, *, linearizable: bool
    ) -> ClientResponse:
        if self._closed:
            raise RuntimeError("the client is closed")
        address = self._target()
        try:
            connection = await self._connection(address)
            response = await connection.request(
                op, key, value, linearizable, self._budget_s(self.request_timeout_s)
            )
        except (Unavailable, Timeout, Indeterminate):
            self._forget(address)
            raise
        if response.ok:
            self._leader = address
            return response
        if response.error is None:
            raise Indeterminate(f"response {response.id} carries neither ok nor error")
        error: PhalanxError = error_from_body(response.error)
        if isinstance(error, NotLeader):
            self._forget(address)
            if error.leader_hint:
                self._leader = parse_endpoint(error.leader_hint)
        raise error


class Client:
    """The blocking form of :class:`AsyncClient` (same arguments, same behaviour).

    It runs its own event loop; use one ``Client`` from one thread at a time.
    """

    def __init__(
        self,
        endpoints: Iterable[str | Address],
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
        attempts_max: int = 50,
    ) -> None:
        self._client = AsyncClient(
            endpoints,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
            total_timeout_s=total_timeout_s,
            attempts_max=attempts_max,
        )
        self._runner = asyncio.Runner()

    @property
    def leader(self) -> Address | None:
        return self._client.leader

    def put(self, key: bytes, value: bytes) -> int:
        return self._runner.run(self._client.put(key, value))

    def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None:
        return self._runner.run(self._client.get(key, linearizable=linearizable))

    def close(self) -> None:
        try:
            self._runner.run(self._client.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
