"""``Client``: the blocking form of :class:`~phalanx.client.client.AsyncClient`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from ssl import SSLContext
from types import TracebackType

from phalanx.client._conn import Address
from phalanx.client.client import (
    CONNECT_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    TOTAL_TIMEOUT_S,
    AsyncClient,
)
from phalanx.client.results import GetResult, WatchEvent
from phalanx.kv.commands import Command, Compare, TxnOp
from phalanx.kv.responses import Response, TxnResult
from phalanx.node.client_protocol import NodeStatus

__all__ = ["Client"]


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
        exactly_once: bool = True,
        ssl: SSLContext | None = None,
    ) -> None:
        self._runner = asyncio.Runner()
        self.aio = AsyncClient(
            endpoints,
            request_timeout_s=request_timeout_s,
            connect_timeout_s=connect_timeout_s,
            total_timeout_s=total_timeout_s,
            attempts_max=attempts_max,
            exactly_once=exactly_once,
            ssl=ssl,
        )

    @property
    def leader(self) -> Address | None:
        return self.aio.leader

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        return self._runner.run(self.aio.put(key, value, lease=lease))

    def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None:
        return self._runner.run(self.aio.get(key, linearizable=linearizable))

    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        linearizable: bool = True,
    ) -> GetResult:
        return self._runner.run(
            self.aio.range(
                key,
                range_end,
                prefix=prefix,
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                count_only=count_only,
                linearizable=linearizable,
            )
        )

    def delete(self, key: bytes, range_end: bytes = b"", *, prefix: bool = False) -> int:
        return self._runner.run(self.aio.delete(key, range_end, prefix=prefix))

    def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        return self._runner.run(self.aio.txn(compare, success, failure))

    def propose(self, command: Command) -> Response:
        return self._runner.run(self.aio.propose(command))

    def compact(self, revision: int) -> None:
        self._runner.run(self.aio.compact(revision))

    def grant(self, ttl_s: float) -> int:
        return self._runner.run(self.aio.grant(ttl_s))

    def keep_alive(self, lease_id: int) -> float:
        return self._runner.run(self.aio.keep_alive(lease_id))

    def revoke(self, lease_id: int) -> None:
        self._runner.run(self.aio.revoke(lease_id))

    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        prefix: bool = False,
        start_revision: int = 0,
    ) -> Iterator[WatchEvent]:
        """Blocking iteration over :meth:`AsyncClient.watch`; close the iterator to stop."""
        events = self.aio.watch(key, range_end, prefix=prefix, start_revision=start_revision)
        try:
            while True:
                try:
                    yield self._runner.run(anext(events))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(events.aclose())  # type: ignore[attr-defined]

    def status(self, endpoint: str | Address | None = None) -> NodeStatus:
        return self._runner.run(self.aio.status(endpoint))

    def add_member(
        self, node_id: int, peer: str, client: str, *, learner: bool = True
    ) -> NodeStatus:
        return self._runner.run(self.aio.add_member(node_id, peer, client, learner=learner))

    def promote_member(self, node_id: int) -> NodeStatus:
        return self._runner.run(self.aio.promote_member(node_id))

    def remove_member(self, node_id: int) -> NodeStatus:
        return self._runner.run(self.aio.remove_member(node_id))

    def transfer_leadership(self, to: int = 0) -> NodeStatus:
        return self._runner.run(self.aio.transfer_leadership(to))

    def close(self) -> None:
        try:
            self._runner.run(self.aio.aclose())
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
