"""A standalone HTTP server for the health probes, for services that are not ASGI apps.

:class:`HealthServer` runs :class:`~phalanx.health.asgi.HealthApp` under uvicorn in a
background daemon thread with its own event loop: ``start()`` binds the socket in the
caller's thread (so "address in use" raises there, and ``port=0`` yields a real port at
once), ``wait_started()`` waits until requests are served, ``stop()`` shuts it down and joins
the thread. It is also a context manager.

:func:`serve` is the asyncio form: it serves on the running loop until cancelled, then shuts
down gracefully before re-raising the cancellation.

Uvicorn is configured not to touch the process's logging and, unless asked, not to install
signal handlers: the health server is a guest in someone else's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

import uvicorn

from phalanx.health.asgi import HealthApp
from phalanx.health.checks import HealthRegistry
from phalanx.resilience.config import require_positive

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HealthServer",
    "LoopServer",
    "bind_listener",
    "serve",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_PORT_MAX = 65535


class _Server(uvicorn.Server):
    """uvicorn's server, plus a started event and optional signal handling."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        handle_signals: bool,
        on_started: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(config)
        self.started_event = threading.Event()
        self._handle_signals = handle_signals
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.started_event.set()
        # Not when asked to exit while starting (serve() cancelled early): nothing will serve.
        if self._on_started is not None and self.started and not self.should_exit:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self._handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


class LoopServer(uvicorn.Server):
    """uvicorn's server for an app served on the process's running loop: ``started_event``
    (an asyncio event) is set once it serves, and it installs no signal handlers (the
    process that hosts it has its own). The node's and the fault proxy's endpoints use it."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.started_event.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    @classmethod
    def quiet(cls, app: Any, *, connections_max: int, shutdown_s: float) -> LoopServer:
        """A server of ``app`` that leaves the process's logging alone, logs no access line,
        accepts at most ``connections_max`` connections at once and lets requests in
        progress finish for at most ``shutdown_s`` on the way out."""
        config = uvicorn.Config(
            app,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            limit_concurrency=connections_max,
            timeout_graceful_shutdown=int(shutdown_s),
        )
        return cls(config)

    async def wait_serving(self, runner: asyncio.Task[None]) -> bool:
        """Wait until it serves (True), or until ``runner``, the task that runs it, ends
        first (False: it stopped while starting)."""
        started = asyncio.ensure_future(self.started_event.wait())
        done, _ = await asyncio.wait({started, runner}, return_when=asyncio.FIRST_COMPLETED)
        if started in done:
            return True
        started.cancel()
        await asyncio.gather(started, return_exceptions=True)
        return False


def _config(app: HealthApp, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,  # leave the host process's logging alone
        access_log=False,  # probes arrive every few seconds; logging each is noise
        lifespan="off",
        http="h11",
        ws="none",
    )


def bind_listener(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (0: any free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _PORT_MAX:
        raise ValueError(f"port: expected 0..{_PORT_MAX}, got {port!r}")
    if not host:
        raise ValueError("host: must not be empty")
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.settimeout(0.0)  # non-blocking, as the event loop requires
    except OSError:
        sock.close()
        raise
    return sock


def _bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


class HealthServer:
    """Serve ``registry``'s probes on ``host:port`` from a background thread.

    ``port=0`` picks a free port; read it from :attr:`port` after :meth:`start`.
    """

    def __init__(
        self,
        registry: HealthRegistry,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        app: HealthApp | None = None,
        log_level: str = "warning",
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _PORT_MAX:
            raise ValueError(f"port: expected 0..{_PORT_MAX}, got {port!r}")
        self.registry = registry
        self.host = host
        self._requested_port = port
        self.app = app if app is not None else HealthApp(registry)
        self._log_level = log_level
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        if self._socket is not None:
            return _bound_port(self._socket)
        return self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind the socket and start serving in a daemon thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("HealthServer: already started")
        self._socket = bind_listener(self.host, self._requested_port)
        self._server = _Server(_config(self.app, self._log_level), handle_signals=False)
        server, sock = self._server, self._socket

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as error:  # SystemExit too: uvicorn exits on startup failure
                self._error = error
            finally:
                # Unblock wait_started() if startup failed before serving.
                server.started_event.set()

        self._thread = threading.Thread(target=run, name="phalanx-health-server", daemon=True)
        self._thread.start()

    def wait_started(self, timeout_s: float = 5.0) -> None:
        """Block until requests are being served; ``TimeoutError`` after ``timeout_s``."""
        require_positive("timeout_s", timeout_s)
        if self._server is None:
            raise RuntimeError("HealthServer: not started")
        if not self._server.started_event.wait(timeout_s):
            raise TimeoutError(f"health server did not start within {timeout_s:g} s")
        if self._error is not None or not self._server.started:
            raise RuntimeError(f"health server failed to start: {self._error!r}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the server to finish, and join its thread (at most ``timeout_s``)."""
        require_positive("timeout_s", timeout_s)
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"health server did not stop within {timeout_s:g} s")
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> HealthServer:
        self.start()
        try:
            self.wait_started()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"HealthServer(url={self.url!r}, running={self.running})"


async def serve(
    registry: HealthRegistry,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    app: HealthApp | None = None,
    log_level: str = "warning",
    on_started: Callable[[int], object] | None = None,
    handle_signals: bool = False,
) -> None:
    """Serve ``registry``'s probes on the running loop until cancelled (or signalled).

    ``on_started(port)`` is called once requests are served, with the bound port (useful with
    ``port=0``); not at all if cancelled before that. With ``handle_signals`` uvicorn's
    SIGINT/SIGTERM handling is used, which suits a process whose only job is serving health
    (the CLI).
    """
    sock = bind_listener(host, port)
    bound_port = _bound_port(sock)
    server = _Server(
        _config(app if app is not None else HealthApp(registry), log_level),
        handle_signals=handle_signals,
        on_started=None if on_started is None else lambda: on_started(bound_port),
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        # Finish the graceful shutdown even though we were cancelled, then re-raise.
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    finally:
        sock.close()
