"""``AsyncClient``: talk to a Phalanx cluster over the client protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from ssl import SSLContext
from typing import Final

from phalanx.client._conn import Address, Connection
from phalanx.client.results import GetResult, WatchEvent
from phalanx.errors import (
    BadRequest,
    Indeterminate,
    NotLeader,
    Outcome,
    PhalanxError,
    Rejected,
    Timeout,
    Unavailable,
    outcome_of,
)
from phalanx.kv.commands import (
    Command,
    Compact,
    Compare,
    DeleteRange,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Put,
    Range,
    RegisterSession,
    Txn,
    TxnOp,
    prefix_end,
)
from phalanx.kv.errors import Compacted, SessionExpired, TooManyWatchers
from phalanx.kv.responses import (
    DeleteResult,
    LeaseGrantResult,
    LeaseKeepAliveResult,
    PutResult,
    RangeResult,
    Response,
    SessionResult,
    TxnResult,
)
from phalanx.node.client_protocol import (
    ClientRequest,
    ClientResponse,
    MemberChange,
    NodeStatus,
    error_from_body,
)
from phalanx.resilience.deadline import remaining_s
from phalanx.resilience.retry import Retry

__all__ = ["REQUEST_TIMEOUT_S", "AsyncClient", "parse_endpoint"]

#: How long one request may wait for its answer; a little longer than the node's own
#: request deadline (5 s), so the node's ``Timeout`` normally arrives first.
REQUEST_TIMEOUT_S: Final = 6.0
CONNECT_TIMEOUT_S: Final = 1.0
#: The whole call, retries included.
TOTAL_TIMEOUT_S: Final = 15.0
#: Writes of one session in flight at once, counted from the oldest unanswered one; below
#: the state machine's ``session_responses_max`` (64 by default).
SESSION_WINDOW: Final = 32
#: Times a watch re-subscribes after losing its node before giving up.
WATCH_RESUMES_MAX: Final = 1000


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

    Writes: with ``exactly_once`` (the default) the client opens a session with the cluster
    and numbers its writes, and the state machine applies each number once (Raft thesis
    6.3), so a write whose answer was lost is retried safely and applied once. Without it, a
    write is retried only when the failure proves nothing was applied (``NotLeader``,
    ``NoQuorum``, a connection that could not be opened): a write sent without an answer
    raises ``Timeout`` or ``Indeterminate``, whose outcome is INDETERMINATE. Every call is
    bounded by ``total_timeout_s``. ``ssl`` (e.g. ``TlsFiles(...).client_context()``) connects
    with TLS.
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
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        if not self.endpoints:
            raise ValueError("endpoints: at least one is required")
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.exactly_once = exactly_once
        self._ssl = ssl
        self._leader: Address | None = None
        self._turn = 0
        self._connections: dict[Address, Connection] = {}
        self._dialling: dict[Address, asyncio.Lock] = {}
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
        self._session_retry = Retry(
            name="phalanx.client.session_write",
            retry_on=lambda exc: not isinstance(exc, Rejected | RuntimeError),
            **common,  # type: ignore[arg-type]
        )
        # Session state: the id the cluster gave us, the next sequence number, the numbers
        # still awaiting an answer (everything below the smallest was answered).
        self._client_id = 0
        self._next_seq = 1
        self._outstanding: set[int] = set()
        self._window = asyncio.Condition()
        self._session_lock = asyncio.Lock()
        self._total_timeout_s = total_timeout_s
        self._closed = False

    @property
    def leader(self) -> Address | None:
        """The client address of the node believed to lead, or None."""
        return self._leader

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def session_id(self) -> int:
        """The exactly-once session's id (0 until the first write opens it)."""
        return self._client_id

    # -- key-value ----------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` = ``value`` (attached to ``lease`` when not 0); returns the write's
        revision once it is applied."""
        result = await self.propose(Put(key, value, lease))
        assert isinstance(result, PutResult)  # noqa: S101 - the state machine's contract
        return result.revision

    async def get(self, key: bytes, *, linearizable: bool = True) -> bytes | None:
        """The value of ``key`` or None; ``linearizable=False`` allows a stale local read."""
        result = await self.range(key, linearizable=linearizable)
        return result.kvs[0].value if result.kvs else None

    async def range(
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
        """Read ``key``, the range ``[key, range_end)``, or every key starting with ``key``
        (``prefix=True``), at ``revision`` (0: the latest), at most ``limit`` key-values.

        ``linearizable=False`` reads one node's local state: faster and available in a
        minority partition, but possibly stale, which the result's ``stale`` says.
        """
        end = prefix_end(key) if prefix else range_end
        request = ClientRequest(
            0,
            "range",
            range=Range(key, end, revision, limit, keys_only, count_only),
            linearizable=linearizable,
        )
        response = await self._read_retry.acall(self._attempt, request)
        result = response.result
        assert isinstance(result, RangeResult)  # noqa: S101 - the protocol's contract
        return GetResult(result.kvs, result.revision, result.count, result.more, response.stale)

    async def delete(self, key: bytes, range_end: bytes = b"", *, prefix: bool = False) -> int:
        """Delete ``key``, a range, or a prefix; returns how many keys were deleted."""
        end = prefix_end(key) if prefix else range_end
        result = await self.propose(DeleteRange(key, end))
        assert isinstance(result, DeleteResult)  # noqa: S101
        return result.deleted

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """If every compare holds run ``success``, else ``failure``; atomically."""
        result = await self.propose(Txn(tuple(compare), tuple(success), tuple(failure)))
        assert isinstance(result, TxnResult)  # noqa: S101
        return result

    async def compact(self, revision: int) -> None:
        """Forget the history below ``revision`` (reads and watches below it fail)."""
        await self.propose(Compact(revision))

    # -- leases -------------------------------------------------------------------------------

    async def grant(self, ttl_s: float) -> int:
        """A new lease of ``ttl_s``; returns its id. Keys put with it go when it expires."""
        result = await self.propose(LeaseGrant(max(1, round(ttl_s * 1000))))
        assert isinstance(result, LeaseGrantResult)  # noqa: S101
        return result.lease_id

    async def keep_alive(self, lease_id: int) -> float:
        """Renew a lease for its whole TTL (``LeaseNotFound`` once it expired); its TTL."""
        result = await self.propose(LeaseKeepAlive(lease_id))
        assert isinstance(result, LeaseKeepAliveResult)  # noqa: S101
        return result.ttl_ms / 1000

    async def revoke(self, lease_id: int) -> None:
        """End a lease now; its keys are deleted."""
        await self.propose(LeaseRevoke(lease_id))

    # -- watches ------------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        prefix: bool = False,
        start_revision: int = 0,
    ) -> AsyncIterator[WatchEvent]:
        """Every change of ``key`` (or the range, or the prefix) from ``start_revision``
        (0: from now), in revision order, without gaps.

        When its node fails the watch moves to another one and resumes after the last
        revision it delivered. Raises ``Compacted`` when the history it needs is gone.
        """
        end = prefix_end(key) if prefix else range_end
        next_revision = start_revision
        for _ in range(WATCH_RESUMES_MAX):
            address = self._leader or self._target()
            try:
                connection = await self._connection(address)
                request_id, queue = connection.open_stream(
                    ClientRequest(0, "watch", range=Range(key, end, next_revision))
                )
            except Unavailable:
                self._forget(address)
                await asyncio.sleep(0.05)
                continue
            try:
                while True:
                    item = _watch_response(await queue.get())
                    if next_revision == 0 and item.start_revision:
                        # Registered "from now": pin the start so a resume misses nothing.
                        next_revision = item.start_revision
                    for event in item.events:
                        yield WatchEvent.of(event)
                        next_revision = event.revision + 1
            except Unavailable:
                self._forget(address)
                await asyncio.sleep(0.05)
            finally:
                connection.close_stream(request_id)
        raise Unavailable(f"the watch lost its node {WATCH_RESUMES_MAX} times")

    # -- cluster ------------------------------------------------------------------------------

    async def status(self, endpoint: str | Address | None = None) -> NodeStatus:
        """What ``endpoint`` (default: any node) says of itself and the cluster."""
        request = ClientRequest(0, "status")
        if endpoint is not None:
            address = parse_endpoint(endpoint)
            connection = await self._connection(address)
            response = await connection.request(request, self._budget_s(self.request_timeout_s))
            return _status_of(_checked(response))
        response = await self._read_retry.acall(self._attempt, request, to_leader=False)
        return _status_of(response)

    async def add_member(
        self, node_id: int, peer: str, client: str, *, learner: bool = True
    ) -> NodeStatus:
        """Add a member (a learner unless ``learner=False``); start it with ``--join``."""
        action = "add" if learner else "add_voter"
        return await self._member(MemberChange(action, node_id, peer, client))

    async def promote_member(self, node_id: int) -> NodeStatus:
        return await self._member(MemberChange("promote", node_id))

    async def remove_member(self, node_id: int) -> NodeStatus:
        return await self._member(MemberChange("remove", node_id))

    async def transfer_leadership(self, to: int = 0) -> NodeStatus:
        """Ask the leader to hand leadership to ``to`` (0: the most up-to-date voter)."""
        response = await self._write_retry.acall(
            self._attempt, ClientRequest(0, "transfer", node_id=to)
        )
        return _status_of(response)

    async def _member(self, change: MemberChange) -> NodeStatus:
        response = await self._write_retry.acall(
            self._attempt, ClientRequest(0, "member", member=change)
        )
        return _status_of(response)

    # -- writes ---------------------------------------------------------------------------------

    async def propose(self, command: Command) -> Response:
        """Put one command through the log (see the class for the retry rules)."""
        if not self.exactly_once:
            response = await self._write_retry.acall(
                self._attempt, ClientRequest(0, "propose", command=command)
            )
            return _result_of(response)
        await self._open_session()
        seq = await self._take_seq()
        session = self._client_id
        first = [True]
        try:
            response = await self._session_retry.acall(self._session_attempt, command, seq, first)
        except PhalanxError as exc:
            if not first[0] and outcome_of(exc) is Outcome.FAILED:
                # The last attempt failed cleanly, but an earlier one was sent and never
                # answered: it may have been applied, so the write's outcome is unknown.
                raise Indeterminate(
                    f"write {seq} of session {session} was sent without an answer before "
                    f"the retries ran out ({exc}); it may have been applied"
                ) from exc
            raise
        finally:
            async with self._window:
                if self._client_id == session:  # a reopened session numbers afresh
                    self._outstanding.discard(seq)
                self._window.notify_all()
        return _result_of(response)

    async def _take_seq(self) -> int:
        """The next sequence number, once it is within ``SESSION_WINDOW`` of the oldest one
        still unanswered: the state machine keeps only so many unacknowledged answers per
        session, so a slow request holds the newer ones back instead of failing them."""

        def open_window() -> bool:
            oldest = min(self._outstanding, default=self._next_seq)
            return self._next_seq - oldest < SESSION_WINDOW

        try:
            async with asyncio.timeout(self._budget_s(self._total_timeout_s)), self._window:
                await self._window.wait_for(open_window)
                seq = self._next_seq
                self._next_seq += 1
                self._outstanding.add(seq)
                return seq
        except TimeoutError:
            raise Unavailable(
                f"{SESSION_WINDOW} earlier writes of this client are still unanswered; "
                "nothing was sent"
            ) from None

    async def _session_attempt(
        self, command: Command, seq: int, first: list[bool]
    ) -> ClientResponse:
        request = ClientRequest(
            0,
            "propose",
            command=command,
            client_id=self._client_id,
            seq=seq,
            acked_seq=min(self._outstanding, default=seq),
        )
        sent_before = not first[0]
        try:
            return await self._attempt(request)
        except SessionExpired:
            if sent_before:
                # An earlier attempt may have been applied and the session that would have
                # deduplicated it is gone: the outcome is unknown (SessionExpired says so).
                raise
            self._client_id = 0
            await self._open_session()
            raise Unavailable("the session expired before this request; opened a new one") from None
        except (Timeout, Indeterminate):
            first[0] = False
            raise

    async def _open_session(self) -> None:
        if self._client_id:
            return
        async with self._session_lock:
            await self._register_session()

    async def _register_session(self) -> None:
        if not self._client_id:  # another task may have opened it while this one waited
            response = await self._write_retry.acall(
                self._attempt, ClientRequest(0, "propose", command=RegisterSession())
            )
            result = _result_of(response)
            assert isinstance(result, SessionResult)  # noqa: S101
            self._client_id = result.client_id
            self._next_seq = 1
            self._outstanding.clear()

    # -- life cycle ---------------------------------------------------------------------------

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
        if self._closed:
            raise RuntimeError("the client is closed")
        connection = self._connections.get(address)
        if connection is not None and connection.usable:
            return connection
        # One dial per address at a time: concurrent first calls share the connection.
        lock = self._dialling.setdefault(address, asyncio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and connection.usable:
                return connection
            if connection is not None:
                await connection.aclose()
            connection = Connection(address, ssl=self._ssl)
            await connection.connect(self._budget_s(self.connect_timeout_s))
            if self.closed:  # closed while this call was dialling
                await connection.aclose()
                raise RuntimeError("the client is closed")
            self._connections[address] = connection
            return connection

    async def _attempt(self, request: ClientRequest, *, to_leader: bool = True) -> ClientResponse:
        address = self._target()
        try:
            connection = await self._connection(address)
            response = await connection.request(request, self._budget_s(self.request_timeout_s))
        except (Unavailable, Timeout, Indeterminate):
            self._forget(address)
            raise
        if response.ok:
            if to_leader and request.linearizable:
                self._leader = address
            return response
        if response.error is None:
            raise Indeterminate(f"response {response.id} carries neither ok nor error")
        error: PhalanxError = error_from_body(response.error)
        if isinstance(error, NotLeader):
            self._forget(address)
            if error.leader_hint:
                self._leader = parse_endpoint(error.leader_hint)
        elif isinstance(error, Unavailable):
            self._forget(address)
        raise error


def _watch_response(item: ClientResponse | BaseException) -> ClientResponse:
    """A watch's next response; a lost node raises ``Unavailable`` (the watch moves on),
    ``Compacted``, ``TooManyWatchers`` and other rejections end the watch."""
    if isinstance(item, BaseException):
        raise Unavailable(str(item))
    if item.error is None:
        return item
    error = error_from_body(item.error)
    if isinstance(error, Compacted | Rejected | TooManyWatchers):
        raise error  # the watch is refused or its history is gone: moving on cannot help
    raise Unavailable(str(error))


def _checked(response: ClientResponse) -> ClientResponse:
    if response.ok:
        return response
    if response.error is None:
        raise Indeterminate(f"response {response.id} carries neither ok nor error")
    raise error_from_body(response.error)


def _result_of(response: ClientResponse) -> Response:
    if response.result is None:
        raise Indeterminate(f"response {response.id} carries no result")
    return response.result


def _status_of(response: ClientResponse) -> NodeStatus:
    if response.status is None:
        raise Indeterminate(f"response {response.id} carries no status")
    return response.status
