"""``phalanx health``: serve liveness, readiness and startup probes from the command line.

``phalanx health serve --check tcp:HOST:PORT --check sqlite:PATH`` registers each ``--check``
as a readiness check and serves ``/healthz``, ``/ready`` and ``/startup`` until interrupted.
It is the container command of ``docs/kubernetes/deployment.yaml``.
"""

from __future__ import annotations

import asyncio

import click

from phalanx.health.builtin import sqlite_check, tcp_check
from phalanx.health.checks import DEFAULT_CACHE_S, DEFAULT_TIMEOUT_S, HealthRegistry
from phalanx.health.server import DEFAULT_HOST, DEFAULT_PORT, serve

__all__ = ["health", "parse_check_spec", "registry_from_specs"]


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


def registry_from_specs(
    specs: tuple[str, ...] | list[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cache_s: float = DEFAULT_CACHE_S,
) -> HealthRegistry:
    """A registry with one readiness check per ``--check`` spec, named after the spec."""
    registry = HealthRegistry(timeout_s=timeout_s, cache_s=cache_s)
    for spec in specs:
        kind, target, port = parse_check_spec(spec)
        if kind == "tcp" and port is not None:
            registry.add(spec, tcp_check(target, port), probes="readiness")
        else:
            registry.add(spec, sqlite_check(target), probes="readiness")
    return registry


@click.group()
def health() -> None:
    """Liveness, readiness and startup probes."""


@health.command("serve")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port.")
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
        names = ", ".join(checks) or "none"
        click.echo(f"serving health on http://{host}:{bound_port} (readiness checks: {names})")

    try:
        asyncio.run(serve(registry, host, port, on_started=announce, handle_signals=True))
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from error
    except KeyboardInterrupt:
        pass
