"""``phalanx health``: serve liveness, readiness and startup probes from the command line.

``phalanx health serve --check tcp:HOST:PORT --check sqlite:PATH`` registers each ``--check``
as a readiness check and serves ``/healthz``, ``/ready`` and ``/startup`` until interrupted.
It is the container command of ``docs/kubernetes/deployment.yaml``.

A check is named after its spec. A spec that is not a valid check name (a space in a path, a
path longer than ``CHECK_NAME_CHARS_MAX``) gets a derived name: other characters become
``_``, a long one keeps its start and end, and a short hash of the spec keeps names apart;
the check's message then starts with the full spec.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import cast

import click

from phalanx.health.builtin import sqlite_check, tcp_check
from phalanx.health.checks import (
    CHECK_NAME_CHARS_MAX,
    DEFAULT_CACHE_S,
    DEFAULT_TIMEOUT_S,
    CheckFailed,
    CheckFn,
    HealthRegistry,
)
from phalanx.health.server import DEFAULT_HOST, DEFAULT_PORT, serve

__all__ = ["check_name", "health", "parse_check_spec", "registry_from_specs"]

_NAME_CHAR_BAD = re.compile(r"[^A-Za-z0-9_.:/@+-]")
_NAME_START_OK = re.compile(r"[A-Za-z0-9]")
_HASH_CHARS = 8
_PORT_MAX = 65535


def parse_check_spec(spec: str) -> tuple[str, str, int | None]:
    """Split a ``--check`` value into ``(kind, target, port)``.

    ``"tcp:HOST:PORT"`` gives ``("tcp", HOST, PORT)`` and ``"sqlite:PATH"`` gives
    ``("sqlite", PATH, None)``. Raises ``ValueError`` naming ``--check`` for anything else.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"--check: expected tcp:HOST:PORT or sqlite:PATH, got {spec!r}")
    if kind == "sqlite":
        return ("sqlite", rest, None)
    if kind == "tcp":
        host, sep, port_text = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:5432
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"--check: expected tcp:HOST:PORT, got {spec!r}")
        return ("tcp", host, int(port_text))
    raise ValueError(f"--check: unknown kind {kind!r} in {spec!r}; expected tcp or sqlite")


def check_name(spec: str) -> str:
    """The check name for a ``--check`` spec: the spec itself when it is a valid name.

    Otherwise characters a name cannot hold become ``_``, a name over
    ``CHECK_NAME_CHARS_MAX`` keeps its start and end around ``...``, and ``-`` plus a short
    hash of the whole spec is appended, so two specs never share a derived name.
    """
    cleaned = _NAME_CHAR_BAD.sub("_", spec)
    if not _NAME_START_OK.match(cleaned):
        cleaned = "c" + cleaned
    if cleaned == spec and len(spec) <= CHECK_NAME_CHARS_MAX:
        return spec
    suffix = "-" + hashlib.sha256(spec.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    room = CHECK_NAME_CHARS_MAX - len(suffix)
    if len(cleaned) > room:
        head = room // 2
        tail = room - head - len("...")
        cleaned = cleaned[:head] + "..." + cleaned[-tail:]
    return cleaned + suffix


def _with_spec(spec: str, fn: CheckFn) -> CheckFn:
    """``fn`` with ``spec`` at the start of its message, pass or fail."""

    def label(message: object) -> str:
        return f"{spec}: {message}" if message else spec

    def failure(error: Exception) -> CheckFailed:
        text = str(error) if isinstance(error, CheckFailed) else f"{type(error).__name__}: {error}"
        return CheckFailed(label(text))

    if inspect.iscoroutinefunction(fn):
        async_fn = cast(Callable[[], Awaitable[object]], fn)

        async def check_async() -> str:
            try:
                return label(await async_fn())
            except Exception as error:  # reported by the registry as this check's failure
                raise failure(error) from error

        return check_async

    def check_sync() -> str:
        try:
            return label(fn())
        except Exception as error:  # reported by the registry as this check's failure
            raise failure(error) from error

    return check_sync


def registry_from_specs(
    specs: tuple[str, ...] | list[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cache_s: float = DEFAULT_CACHE_S,
) -> HealthRegistry:
    """A registry with one readiness check per ``--check`` spec, named by :func:`check_name`."""
    registry = HealthRegistry(timeout_s=timeout_s, cache_s=cache_s)
    for spec in specs:
        _kind, target, port = parse_check_spec(spec)  # a port only for tcp
        fn: CheckFn = sqlite_check(target) if port is None else tcp_check(target, port)
        name = check_name(spec)
        registry.add(name, fn if name == spec else _with_spec(spec, fn), probes="readiness")
    return registry


@click.group()
def health() -> None:
    """Liveness, readiness and startup probes."""


@health.command("serve")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, _PORT_MAX),
    help="Port (0 picks a free one).",
)
@click.option(
    "--check",
    "checks",
    multiple=True,
    metavar="tcp:HOST:PORT|sqlite:PATH",
    help="A readiness dependency; repeat for several.",
)
@click.option(
    "--timeout-s", default=DEFAULT_TIMEOUT_S, show_default=True, type=float, help="Per check."
)
@click.option(
    "--cache-s", default=DEFAULT_CACHE_S, show_default=True, type=float, help="Result cache."
)
def serve_command(
    host: str, port: int, checks: tuple[str, ...], timeout_s: float, cache_s: float
) -> None:
    """Serve /healthz, /ready and /startup until interrupted."""
    try:
        registry = registry_from_specs(checks, timeout_s=timeout_s, cache_s=cache_s)
    except ValueError as error:
        raise click.UsageError(str(error)) from error

    def announce(bound_port: int) -> None:
        names = ", ".join(c.name for c in registry.checks()) or "none"
        click.echo(f"serving health on http://{host}:{bound_port} (readiness checks: {names})")

    try:
        asyncio.run(serve(registry, host, port, on_started=announce, handle_signals=True))
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from error
    except KeyboardInterrupt:
        pass
