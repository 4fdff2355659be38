"""The health probes as a pure ASGI application.

:class:`HealthApp` answers ``GET`` and ``HEAD`` on three paths (``/healthz``, ``/ready``,
``/startup`` unless configured otherwise) with 200 or 503 and a JSON body::

    {"probe": "readiness", "status": "ok", "reason": "",
     "checks": [{"name": "db", "status": "ok", "duration_ms": 0.8, "message": ""}]}

``?verbose`` (or ``?verbose=1``) adds ``critical``, ``checked_at`` and ``age_ms`` to each
check. Any other path is 404; any other method is 405 with ``Allow: GET, HEAD``. It needs no
framework, so it mounts under Starlette, FastAPI or any ASGI server; when mounted under a
prefix it honours the scope's ``root_path``. It also answers the ``lifespan`` protocol so it
can be served on its own.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from phalanx.health.checks import HealthRegistry, Probe

__all__ = ["DEFAULT_PATHS", "HealthApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_PATHS: dict[Probe, str] = {
    Probe.LIVENESS: "/healthz",
    Probe.READINESS: "/ready",
    Probe.STARTUP: "/startup",
}

_ALLOWED_METHODS = ("GET", "HEAD")
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _check_path(field: str, path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{field}: must be a path starting with '/', got {path!r}")
    return path


class HealthApp:
    """An ASGI app serving the liveness, readiness and startup probes of ``registry``."""

    def __init__(
        self,
        registry: HealthRegistry,
        *,
        liveness_path: str = DEFAULT_PATHS[Probe.LIVENESS],
        readiness_path: str = DEFAULT_PATHS[Probe.READINESS],
        startup_path: str = DEFAULT_PATHS[Probe.STARTUP],
    ) -> None:
        self.registry = registry
        routes = {
            _check_path("liveness_path", liveness_path): Probe.LIVENESS,
            _check_path("readiness_path", readiness_path): Probe.READINESS,
            _check_path("startup_path", startup_path): Probe.STARTUP,
        }
        if len(routes) != len(Probe):
            raise ValueError("liveness_path, readiness_path, startup_path: must all differ")
        self._routes = routes

    @property
    def paths(self) -> dict[Probe, str]:
        """The path each probe is served on."""
        return {probe: path for path, probe in self._routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            # Not ours to answer (e.g. websocket); closing is the polite refusal.
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        method = scope.get("method", "GET")
        probe = self._routes.get(self._route_path(scope))
        if probe is None:
            await self._respond(send, 404, {"error": "not found"}, head=method == "HEAD")
            return
        if method not in _ALLOWED_METHODS:
            await self._respond(
                send,
                405,
                {"error": "method not allowed"},
                head=False,
                extra_headers=[(b"allow", b", ".join(m.encode() for m in _ALLOWED_METHODS))],
            )
            return
        report = await self.registry.run_probe(probe)
        body = report.to_json(verbose=_verbose(scope))
        await self._respond(send, report.http_status, body, head=method == "HEAD")

    @staticmethod
    def _route_path(scope: Scope) -> str:
        path: str = scope.get("path", "/")
        root_path: str = scope.get("root_path", "")
        # Mounted apps may see the full path with the mount prefix in root_path.
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        return path

    @staticmethod
    async def _respond(
        send: Send,
        status: int,
        body: dict[str, Any],
        *,
        head: bool,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            # A cached probe answer would hide a state change from the orchestrator.
            (b"cache-control", b"no-store"),
            *(extra_headers or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else payload})

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _verbose(scope: Scope) -> bool:
    raw: bytes = scope.get("query_string", b"")
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key == "verbose":
            return value.lower() not in _FALSE_WORDS
    return False
