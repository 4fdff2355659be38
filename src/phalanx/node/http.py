"""The node's HTTP endpoint: health probes for an orchestrator and metrics for Prometheus.

One small ASGI app (:class:`NodeHttpApp`) answers four paths:

* ``/healthz`` (liveness): the event loop is responsive. A :class:`LoopMonitor` task wakes
  every ``LOOP_BEAT_INTERVAL_S`` and records how late the loop woke it; the check fails when
  that lag, or the silence since the last beat, passes ``LOOP_LAG_S_MAX``. A loop blocked
  outright cannot answer at all, which the orchestrator's probe timeout turns into a failure.
* ``/startup``: the log is replayed: the node runs and has applied again every entry its
  log recorded as committed (the commit index when a probe first found it running).
* ``/ready``: the node runs, knows a leader and has applied up to the commit index it
  learned from the first leader it heard of. Once caught up, only a known leader is needed;
  a node that loses its leader, or begins to close, is not ready.
* ``/metrics``: the node's Prometheus registry (:mod:`phalanx.node.metrics`), in the text
  format or OpenMetrics, as the scraper's ``Accept`` header asks.
* ``/admin/faults``, only when the app is given the node's
  :class:`~phalanx.net.faults.LinkFaults` (``phalanx node --admin``): ``GET`` answers the
  current faults as JSON; ``POST`` with a JSON object changes them, in this order:
  ``{"heal": true}`` restores every link and resets the rest; ``{"isolate": [2, 3]}`` cuts
  the links to those peers; ``{"toxics": {"2": {"loss": 0.1, "latency_ms": 50}}}``
  degrades outgoing links; ``{"seed": 7}`` reseeds the draws; ``{"clock_offset_ms": 5000}``
  shifts the clock the node stamps its proposals with; ``{"clock_strobe": {"delta_ms": 3000,
  "period_ms": 50, "duration_ms": 2000}}`` makes that clock jump back and forth. The answer
  is the state after.
  Anyone who reaches it can partition the cluster: it exists for chaos testing on loopback.

The probes come from :mod:`phalanx.health` (registry, caching, timeouts, startup gating and
the JSON answers); the checks here only need :class:`NodeView` (``status()``, ``started``,
``startup_commit_index``), so tests drive them with a fake node. :class:`NodeHttpServer`
runs the app under uvicorn on the node process's own event loop, as a task it owns and
cancels on :meth:`~NodeHttpServer.aclose`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Annotated, Any, Final, Protocol

import msgspec
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import choose_encoder

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.health import CheckFailed, HealthApp, HealthRegistry, Probe
from phalanx.health.server import LoopServer, bind_listener
from phalanx.net.faults import CLOCK_OFFSET_MS_MAX, ClockStrobe, LinkFaults, Toxic

__all__ = [
    "ADMIN_BODY_BYTES_MAX",
    "ADMIN_FAULTS_PATH",
    "HTTP_CONNECTIONS_MAX",
    "HTTP_SHUTDOWN_S_MAX",
    "LOOP_BEAT_INTERVAL_S",
    "LOOP_LAG_S_MAX",
    "METRICS_PATH",
    "AdminFaults",
    "FaultsRequest",
    "LoopMonitor",
    "NodeChecks",
    "NodeHttpApp",
    "NodeHttpServer",
    "NodeView",
    "StatusView",
    "node_health",
    "node_http_server",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Address = tuple[str, int]

METRICS_PATH: Final = "/metrics"
ADMIN_FAULTS_PATH: Final = "/admin/faults"
#: The largest request body the admin endpoint reads.
ADMIN_BODY_BYTES_MAX: Final = 64 * 1024
#: How often the loop monitor wakes up to measure the event loop's lag.
LOOP_BEAT_INTERVAL_S: Final = 0.5
#: A loop that runs a timer this much late (or has not run the monitor for this long past its
#: interval) is stuck: liveness fails. Well above a slow fsync, which runs in a worker thread.
LOOP_LAG_S_MAX: Final = 2.0
#: Connections served at once; more are answered 503 by uvicorn. Probes and scrapes are few.
HTTP_CONNECTIONS_MAX: Final = 64
#: How long closing waits for requests in progress before cancelling them.
HTTP_SHUTDOWN_S_MAX: Final = 2.0
_NO_LEADER = 0
_ALLOWED_METHODS = ("GET", "HEAD")


class StatusView(Protocol):
    """What the checks read from a node's status (``phalanx.raft.node.Status`` has it)."""

    @property
    def term(self) -> int: ...

    @property
    def commit(self) -> int: ...

    @property
    def applied(self) -> int: ...

    @property
    def leader(self) -> int: ...


class NodeView(Protocol):
    """The node, as the health checks see it (``RaftNode`` is one).

    ``status()`` raises ``RuntimeError`` before the node is open; ``started`` is true from
    the end of ``start()`` until ``aclose()`` begins; ``startup_commit_index`` is the commit
    index the node learned from the first leader it heard of (None before that).
    """

    def status(self) -> StatusView: ...

    @property
    def started(self) -> bool: ...

    @property
    def startup_commit_index(self) -> int | None: ...


# -- liveness -------------------------------------------------------------------------------


class LoopMonitor:
    """Measures how late the event loop runs a timer; the liveness check reads the result.

    :meth:`run` is the task (owned by :class:`NodeHttpServer`); :meth:`record` is what it
    calls, and what tests call directly with a :class:`~phalanx.clock.ManualClock`.
    """

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        interval_s: float = LOOP_BEAT_INTERVAL_S,
        lag_s_max: float = LOOP_LAG_S_MAX,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s: must be > 0, got {interval_s}")
        if lag_s_max <= 0:
            raise ValueError(f"lag_s_max: must be > 0, got {lag_s_max}")
        self.interval_s = interval_s
        self.lag_s_max = lag_s_max
        self._clock = clock
        #: The lag of the last beat; ``None`` before the first one.
        self.lag_s: float | None = None
        self._beat_at_s: float | None = None

    def record(self, lag_s: float) -> None:
        self.lag_s = max(lag_s, 0.0)
        self._beat_at_s = self._clock.now_s()

    async def run(self) -> None:
        """Beat every ``interval_s`` until cancelled."""
        while True:
            due_s = self._clock.now_s() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(self._clock.now_s() - due_s)

    async def check(self) -> str:
        """The liveness check: fails when the loop was late by more than ``lag_s_max``."""
        if self.lag_s is None or self._beat_at_s is None:
            return "event loop: no beat measured yet"
        silent_s = self._clock.now_s() - self._beat_at_s
        if silent_s > self.interval_s + self.lag_s_max:
            raise CheckFailed(f"event loop: no beat for {silent_s:.1f} s")
        if self.lag_s > self.lag_s_max:
            raise CheckFailed(
                f"event loop: a timer ran {self.lag_s:.3f} s late (max {self.lag_s_max:g} s)"
            )
        return f"event loop lag {self.lag_s * 1000:.1f} ms"


# -- startup and readiness --------------------------------------------------------------------


def _status(node: NodeView) -> StatusView:
    if not node.started:
        raise CheckFailed("node not running")
    try:
        return node.status()
    except RuntimeError as exc:  # not open: still replaying, or already closed
        raise CheckFailed(f"node not running: {exc}") from None


class NodeChecks:
    """The startup and readiness checks of one node.

    Both are async so that they read the node on its own event loop (the Raft core is not
    thread-safe). Startup waits for the entries the log recorded as committed to be applied
    again (the state machine lives in memory): the target is the commit index when a probe
    first finds the node running. Readiness waits for a known leader and for the commit index
    the node learned from the first leader it heard of (``startup_commit_index``) to be
    applied; once it is, only a known leader is needed.
    """

    def __init__(self, node: NodeView) -> None:
        self._node = node
        self._replay_target: int | None = None

    async def startup(self) -> str:
        status = _status(self._node)
        if self._replay_target is None:
            self._replay_target = status.commit
        target = self._replay_target
        if status.applied < target:
            raise CheckFailed(f"replaying the log: applied {status.applied} of {target}")
        return f"log replayed: applied {status.applied}"

    async def readiness(self) -> str:
        status = _status(self._node)
        if status.leader == _NO_LEADER:
            raise CheckFailed(f"no leader known in term {status.term}")
        target = self._node.startup_commit_index
        if target is None:
            raise CheckFailed(f"no commit index learned yet (leader {status.leader})")
        if status.applied < target:
            raise CheckFailed(
                f"catching up: applied {status.applied} of {target} (leader {status.leader})"
            )
        return (
            f"leader {status.leader} in term {status.term}; "
            f"applied {status.applied}, commit {status.commit}"
        )


def node_health(
    node: NodeView, monitor: LoopMonitor, *, registry: HealthRegistry | None = None
) -> HealthRegistry:
    """A registry with the node's three checks: ``event_loop`` (liveness), ``log_replayed``
    (startup) and ``raft`` (readiness)."""
    health = registry if registry is not None else HealthRegistry()
    checks = NodeChecks(node)
    health.add("event_loop", monitor.check, probes=Probe.LIVENESS)
    health.add("log_replayed", checks.startup, probes=Probe.STARTUP)
    health.add("raft", checks.readiness, probes=Probe.READINESS)
    return health


# -- the ASGI app ---------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> str:
    values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]
    return ",".join(values)


class FaultsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /admin/faults``; the parts present are applied in field order."""

    heal: bool = False
    isolate: list[int] = msgspec.field(default_factory=list)
    toxics: dict[int, Toxic] = msgspec.field(default_factory=dict)
    seed: int | None = None
    clock_offset_ms: (
        Annotated[int, msgspec.Meta(ge=-CLOCK_OFFSET_MS_MAX, le=CLOCK_OFFSET_MS_MAX)] | None
    ) = None
    clock_strobe: ClockStrobe | None = None


_FAULTS_DECODER: Final = msgspec.json.Decoder(FaultsRequest)


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, bytes_max: int) -> bytes | None:
    """The request body, or None when it is longer than ``bytes_max``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > bytes_max:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class AdminFaults:
    """``/admin/faults``: read and change a node's injected network faults."""

    def __init__(self, faults: LinkFaults) -> None:
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        if method == "GET":
            await _respond(send, 200, msgspec.json.encode(self.faults.state()), [])
            return
        if method != "POST":
            await _respond(send, 405, b'{"error":"GET or POST"}', [(b"allow", b"GET, POST")])
            return
        body = await _read_body(receive, ADMIN_BODY_BYTES_MAX)
        if body is None:
            await _respond(send, 413, b'{"error":"body too large"}', [])
            return
        try:
            request = _FAULTS_DECODER.decode(body or b"{}")
        except (msgspec.DecodeError, ValueError) as exc:
            await _respond(send, 400, msgspec.json.encode({"error": str(exc)}), [])
            return
        try:
            self.apply(request)
        except ValueError as exc:
            await _respond(send, 400, msgspec.json.encode({"error": str(exc)}), [])
            return
        await _respond(send, 200, msgspec.json.encode(self.faults.state()), [])

    def apply(self, request: FaultsRequest) -> None:
        if request.heal:
            self.faults.heal()
        if request.isolate:
            self.faults.isolate(request.isolate)
        if request.toxics:
            self.faults.set_toxics(request.toxics)
        if request.seed is not None:
            self.faults.reseed(request.seed)
        if request.clock_offset_ms is not None:
            self.faults.set_clock_offset(request.clock_offset_ms)
        if request.clock_strobe is not None:
            self.faults.set_clock_strobe(request.clock_strobe)


class NodeHttpApp:
    """``/metrics`` from ``metrics``, ``/admin/faults`` when given ``faults``, every other
    path from :class:`~phalanx.health.HealthApp`."""

    def __init__(
        self,
        health: HealthRegistry,
        metrics: CollectorRegistry,
        *,
        metrics_path: str = METRICS_PATH,
        faults: LinkFaults | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.metrics_path = metrics_path
        self._probes = HealthApp(health)
        self._admin = None if faults is None else AdminFaults(faults)
        if metrics_path in self._probes.paths.values():
            raise ValueError(f"metrics_path: {metrics_path!r} is a probe's path")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] == "http" and path == self.metrics_path:
            await self._metrics(scope, send)
        elif scope["type"] == "http" and path == ADMIN_FAULTS_PATH and self._admin is not None:
            await self._admin(scope, receive, send)
        else:
            await self._probes(scope, receive, send)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in _ALLOWED_METHODS:
            headers = [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        encoder, content_type = choose_encoder(_header(scope, b"accept"))
        payload = encoder(self.metrics)
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else payload})


# -- the server -----------------------------------------------------------------------------


class NodeHttpServer:
    """Serves ``app`` on ``host:port`` on the running event loop, with the loop monitor.

    :meth:`start` binds (an address in use raises ``OSError`` there; port 0 picks one, see
    :attr:`address`) and returns once requests are served. One task owns uvicorn and the
    monitor; :meth:`aclose` lets requests in progress finish (at most
    ``HTTP_SHUTDOWN_S_MAX``), then cancels the monitor and awaits the task. Also an async
    context manager.
    """

    def __init__(
        self,
        app: NodeHttpApp,
        host: str,
        port: int,
        *,
        monitor: LoopMonitor | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.monitor = monitor
        self._socket: socket.socket | None = None
        self._server: LoopServer | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def health(self) -> HealthRegistry:
        return self.app.health

    @property
    def address(self) -> Address:
        """The bound address once started (the requested one before)."""
        if self._socket is not None:
            host, port = self._socket.getsockname()[:2]
            return str(host), int(port)
        return self.host, self._requested_port

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("start(): the HTTP server was already started")
        self._socket = bind_listener(self.host, self._requested_port)
        self._server = LoopServer.quiet(
            self.app, connections_max=HTTP_CONNECTIONS_MAX, shutdown_s=HTTP_SHUTDOWN_S_MAX
        )
        self._runner = asyncio.create_task(self._run(self._server, self._socket), name="node-http")
        if not await self._server.wait_serving(self._runner):
            await self.aclose()
            raise RuntimeError("the HTTP server stopped while starting")

    async def _run(self, server: LoopServer, sock: socket.socket) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                beat = None
                if self.monitor is not None:
                    beat = tasks.create_task(self.monitor.run(), name="node-http-loop-monitor")
                await server.serve(sockets=[sock])
                if beat is not None:
                    beat.cancel()
        finally:
            sock.close()

    async def aclose(self) -> None:
        server, runner = self._server, self._runner
        self._runner = None
        if server is not None:
            server.should_exit = True
        if runner is not None:
            await runner
        await self.app.health.aclose()

    async def __aenter__(self) -> NodeHttpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        host, port = self.address
        return f"NodeHttpServer(address={host}:{port})"


def node_http_server(
    node: NodeView,
    metrics: CollectorRegistry,
    listen: Address,
    *,
    faults: LinkFaults | None = None,
) -> NodeHttpServer:
    """The whole endpoint of one node on ``listen``: checks, loop monitor, app and server.

    The loop monitor's last lag is also exported as ``phalanx_node_event_loop_lag_seconds``
    in ``metrics``. With ``faults``, ``/admin/faults`` changes them (chaos testing only).
    """
    monitor = LoopMonitor()
    lag = Gauge(
        "phalanx_node_event_loop_lag_seconds",
        "How late the event loop last ran the loop monitor's timer.",
        registry=metrics,
    )
    lag.set_function(lambda: monitor.lag_s or 0.0)
    app = NodeHttpApp(node_health(node, monitor), metrics, faults=faults)
    return NodeHttpServer(app, listen[0], listen[1], monitor=monitor)
