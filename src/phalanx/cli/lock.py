"""``phalanx lock NAME -- COMMAND...``: run a command while holding a distributed lock.

The command gets the holder's fencing token in ``$PHALANX_FENCING_TOKEN`` (to pass to the
resources it changes, which must refuse older tokens: see docs/coordination.md). The exit
status is the command's (128 + N when signal N ended it). SIGINT and SIGTERM are passed on to
the command. If the lock is lost while the command runs (the lease could not be renewed),
the command is terminated and the exit status is ``EXIT_LOCK_LOST``. The lock is released
when the command ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import click

from phalanx.cli.endpoints import client_tls, resolve_endpoints

__all__ = ["EXIT_LOCK_LOST", "FENCING_TOKEN_ENV", "handle_signals", "lock"]

FENCING_TOKEN_ENV: Final = "PHALANX_FENCING_TOKEN"  # noqa: S105 - a variable name
#: The exit status when the lock was lost while the command ran (sysexits' EX_TEMPFAIL).
EXIT_LOCK_LOST: Final = 75
#: How long a terminated command may take to exit before it is killed.
TERMINATE_GRACE_S: Final = 5.0
#: Every client call, retries included.
CALL_TIMEOUT_S: Final = 20.0

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handle_signals(on_signal: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Call ``on_signal(sig)`` on SIGINT/SIGTERM while inside; outside the main thread
    (where the loop cannot take signals) nothing is installed."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in _SIGNALS:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it (a signal N as 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        async with asyncio.timeout(TERMINATE_GRACE_S):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def run_locked(
    endpoints: Sequence[str],
    name: str,
    command: Sequence[str],
    *,
    ttl_s: float,
    timeout_s: float | None,
) -> int:
    """Hold the lock ``name`` while ``command`` runs; the exit status to report."""
    from phalanx.client.client import AsyncClient
    from phalanx.client.lock import Lock
    from phalanx.errors import PhalanxError

    async with AsyncClient(endpoints, total_timeout_s=CALL_TIMEOUT_S, ssl=client_tls()) as client:
        lock = Lock(client, name, ttl_s=ttl_s)
        try:
            held = await lock.acquire(timeout_s=timeout_s)
        except PhalanxError as exc:
            raise click.ClickException(f"lock {name!r}: {type(exc).__name__}: {exc}") from None
        try:
            env = {**os.environ, FENCING_TOKEN_ENV: str(held.fencing_token)}
            try:
                process = await asyncio.create_subprocess_exec(*command, env=env)
            except OSError as exc:
                raise click.ClickException(f"cannot run {command[0]!r}: {exc}") from None

            def forward(sig: signal.Signals) -> None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

            with handle_signals(forward):
                waiting = asyncio.ensure_future(process.wait())
                lost = asyncio.ensure_future(held.lost.wait())
                lost_first = False
                try:
                    done, _ = await asyncio.wait(
                        (waiting, lost), return_when=asyncio.FIRST_COMPLETED
                    )
                    lost_first = waiting not in done
                finally:
                    lost.cancel()
                    if not waiting.done():  # the lock was lost, or we are being cancelled
                        if lost_first:
                            click.echo(
                                f"phalanx lock: lost {name!r} ({held.lost_reason}); "
                                "terminating the command",
                                err=True,
                            )
                        await _terminate(process)
                    await asyncio.gather(waiting, lost, return_exceptions=True)
            return EXIT_LOCK_LOST if lost_first else exit_status(waiting.result())
        finally:
            with contextlib.suppress(PhalanxError):  # else the lease expires within ttl_s
                await lock.release()


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--ttl-s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=3600),
    help="The lock's lease: a holder that stops renewing it loses the lock after this long.",
)
@click.option(
    "--timeout-s",
    default=None,
    type=click.FloatRange(min=0),
    help="Give up waiting for the lock after this long (exit status 1). Default: wait.",
)
@click.option(
    "--endpoints",
    default=None,
    help="Client addresses host:port,... (default: $PHALANX_ENDPOINTS, else the local "
    "cluster's ./.phalanx/cluster.json).",
)
def lock(
    name: str,
    command: tuple[str, ...],
    ttl_s: float,
    timeout_s: float | None,
    endpoints: str | None,
) -> None:
    """Run COMMAND while holding the lock NAME: phalanx lock NAME -- COMMAND...

    COMMAND sees the fencing token in $PHALANX_FENCING_TOKEN; pass it to what it changes.
    The exit status is COMMAND's, or 75 if the lock was lost while it ran.
    """
    addresses = resolve_endpoints(endpoints)
    status = asyncio.run(run_locked(addresses, name, command, ttl_s=ttl_s, timeout_s=timeout_s))
    raise SystemExit(status)
