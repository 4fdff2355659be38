"""The demo's cluster act: a real three-node cluster loses its leader and no write.

Three ``phalanx node`` processes start on 127.0.0.1 in a temporary directory (fsync on).
Writers put keys through the client and count the writes the cluster acknowledged. The
leader's process is killed with SIGKILL mid-stream; the survivors elect a new leader and the
writers carry on. The killed node restarts from its data directory and catches up. Then
every acknowledged write is read back linearizably through the cluster, and from the
restarted node's own state: the proof that an acknowledgement means durable.

Every wait is bounded, and the node processes are stopped (SIGTERM, then SIGKILL) whatever
happens, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from phalanx.cli.local_cluster import (
    LocalCluster,
    LocalMember,
    MemberStatus,
    collect_status,
    create,
    is_alive,
    wait_exit,
)
from phalanx.client import AsyncClient
from phalanx.errors import Indeterminate, PhalanxError, Timeout

__all__ = ["ActResult", "run_cluster_act"]

NODES: Final = 3
#: Writes before the leader is killed, and again after.
WRITES_PER_PHASE: Final = 150
#: Writers at once.
WRITERS: Final = 8
#: Raft tick of the demo's nodes: elections time out after 0.5 to 1 s.
TICK_MS: Final = 50
#: Longest wait for any one step (a leader, a restart, a catch-up).
STEP_WAIT_S_MAX: Final = 15.0
#: How long one write may take, retries included, before its outcome counts as unknown.
WRITE_TIMEOUT_S: Final = 8.0
#: How long the nodes get to stop on SIGTERM before SIGKILL.
SHUTDOWN_WAIT_S: Final = 5.0
#: Reads at once while proving the writes.
READERS: Final = 16
_POLL_S: Final = 0.05
_KEY_PREFIX: Final = b"demo/"


@dataclass
class ActResult:
    """What the act saw: writes ``acknowledged`` (key to value), ``unknown`` (the client
    could not tell whether they were applied: allowed either way), ``failed``; ``missing``
    acknowledged keys not read back (must be empty) and ``missing_on_restarted`` those absent
    from the restarted node's own state."""

    acknowledged: dict[bytes, bytes] = field(default_factory=dict)
    unknown: list[bytes] = field(default_factory=list)
    failed: list[bytes] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    missing: list[bytes] = field(default_factory=list)
    missing_on_restarted: list[bytes] = field(default_factory=list)
    old_leader: int = 0
    new_leader: int = 0
    new_leader_s: float = 0.0
    acknowledged_after_kill: int = 0
    elapsed_s: float = 0.0
    pids: list[int] = field(default_factory=list)

    @property
    def proven(self) -> bool:
        return (
            bool(self.acknowledged)
            and not self.missing
            and not self.missing_on_restarted
            and self.old_leader != 0
            and self.new_leader not in {0, self.old_leader}
        )


def run_cluster_act(
    console: Console, *, writes_per_phase: int = WRITES_PER_PHASE, root: Path | None = None
) -> ActResult:
    """Run the act (in a temporary directory, or under ``root``) and print what happened."""
    console.print(
        f"\n[bold]A real cluster loses its leader[/bold]: {NODES} `phalanx node` processes on "
        "127.0.0.1 (fsync on); the leader gets SIGKILL while clients write."
    )
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="phalanx-demo-", dir=root))
    record = create(directory, NODES, tick_ms=TICK_MS, cluster_id="demo", http=False)
    pids: list[int] = []
    try:
        pids.extend(record.start(member) for member in record.members)
        act = _Act(console, record, pids, writes_per_phase)
        result = asyncio.run(act.run())
    finally:
        _shut_down(record, pids)
        shutil.rmtree(directory, ignore_errors=True)
    result.elapsed_s = time.monotonic() - started
    result.pids = pids
    _summary(console, result)
    return result


def _shut_down(record: LocalCluster, pids: list[int]) -> None:
    """SIGTERM, a bounded wait, then SIGKILL: no node outlives the act, even on Ctrl-C."""
    try:
        record.stop(record.members, wait_s=SHUTDOWN_WAIT_S)
    finally:
        for pid in pids:
            if is_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        wait_exit(pids, SHUTDOWN_WAIT_S)


class _Act:
    def __init__(
        self, console: Console, record: LocalCluster, pids: list[int], writes_per_phase: int
    ) -> None:
        self.console = console
        self.record = record
        self.pids = pids
        self.writes_per_phase = writes_per_phase
        self.result = ActResult()
        self.killed: LocalMember | None = None
        self._next = 0
        self._acknowledged = asyncio.Event()

    async def run(self) -> ActResult:
        result = self.result
        leader = await self.wait_leader(exclude=None)
        result.old_leader = leader
        self.console.print(self.table(await self.statuses(), "The cluster is up"))
        await self.write(self.writes_per_phase)
        self.console.print(
            f"{len(result.acknowledged)} writes acknowledged. The writers go on, and "
            f"[bold red]node {leader}, the leader, gets SIGKILL[/bold red] mid-stream."
        )
        self.killed = self.record.member(leader)
        writers = asyncio.create_task(self.write(self.writes_per_phase))
        try:
            await self.wait_acknowledged(len(result.acknowledged) + WRITERS)
            acknowledged_before = len(result.acknowledged)
            killed_at = time.monotonic()
            await asyncio.to_thread(self.record.kill, self.killed)
            result.new_leader = await self.wait_leader(exclude=leader)
            result.new_leader_s = time.monotonic() - killed_at
        finally:
            await writers
        result.acknowledged_after_kill = len(result.acknowledged) - acknowledged_before
        self.console.print(
            self.table(
                await self.statuses(),
                f"Node {result.new_leader} leads {result.new_leader_s:.2f} s after the kill",
            )
        )
        self.console.print(
            f"{result.acknowledged_after_kill} more writes acknowledged by the new leader. "
            f"Restart node {leader} from its data directory."
        )
        self.pids.append(self.record.start(self.killed))
        await self.wait_caught_up(self.killed)
        self.console.print(self.table(await self.statuses(), f"Node {leader} caught up"))
        await self.prove()
        return result

    # -- writing ------------------------------------------------------------------------------

    def client(self) -> AsyncClient:
        # One client per task: a client's calls are made one at a time.
        return AsyncClient([m.client for m in self.record.members], total_timeout_s=WRITE_TIMEOUT_S)

    async def write(self, count: int) -> None:
        first = self._next
        self._next += count
        keys = iter(range(first, first + count))

        async def writer() -> None:
            async with self.client() as client:
                for n in keys:
                    await self.put(client, n)

        async with asyncio.TaskGroup() as group:
            for _ in range(WRITERS):
                group.create_task(writer())

    async def put(self, client: AsyncClient, n: int) -> None:
        key, value = _KEY_PREFIX + f"{n:06d}".encode(), f"value-{n}".encode()
        try:
            await client.put(key, value)
        except (Timeout, Indeterminate):
            self.result.unknown.append(key)
        except PhalanxError as exc:
            self.result.failed.append(key)
            self.result.errors[type(exc).__name__] += 1
        else:
            self.result.acknowledged[key] = value
            self._acknowledged.set()

    async def wait_acknowledged(self, count: int) -> None:
        """Until ``count`` writes are acknowledged (bounded: the kill happens anyway)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STEP_WAIT_S_MAX):
                while len(self.result.acknowledged) < count:
                    self._acknowledged.clear()
                    await self._acknowledged.wait()

    # -- proving --------------------------------------------------------------------------------

    async def prove(self) -> None:
        """Every acknowledged write, read linearizably through the cluster, and from the
        restarted node's own state."""
        result = self.result
        items = iter(list(result.acknowledged.items()))

        async def reader() -> None:
            async with self.client() as client:
                for key, value in items:
                    if await client.get(key) != value:
                        result.missing.append(key)

        async with asyncio.TaskGroup() as group:
            for _ in range(READERS):
                group.create_task(reader())
        assert self.killed is not None  # noqa: S101 - set before the restart
        async with AsyncClient([self.killed.client], total_timeout_s=WRITE_TIMEOUT_S) as direct:
            local = await direct.range(_KEY_PREFIX, prefix=True, linearizable=False)
        held = {kv.key: kv.value for kv in local.kvs}
        result.missing_on_restarted = [
            key for key, value in result.acknowledged.items() if held.get(key) != value
        ]
        result.missing.sort()

    # -- waiting ----------------------------------------------------------------------------------

    async def statuses(self) -> list[MemberStatus]:
        return await collect_status([m.client for m in self.record.members], timeout_s=0.5)

    async def wait_leader(self, *, exclude: int | None) -> int:
        """The id of a leader other than ``exclude`` that a running member reports."""
        deadline = time.monotonic() + STEP_WAIT_S_MAX
        while time.monotonic() < deadline:
            for status in await self.statuses():
                node = status.status
                if node is not None and node.role == "leader" and node.node_id != exclude:
                    return node.node_id
            await asyncio.sleep(_POLL_S)
        raise PhalanxError(f"no leader elected within {STEP_WAIT_S_MAX:.0f} s")

    async def wait_caught_up(self, member: LocalMember) -> None:
        """Until ``member`` knows the leader and has applied what the cluster committed."""
        deadline = time.monotonic() + STEP_WAIT_S_MAX
        target = max((s.status.commit_index for s in await self.statuses() if s.status), default=0)
        while time.monotonic() < deadline:
            (status,) = await collect_status([member.client], timeout_s=0.5)
            node = status.status
            if node is not None and node.leader != 0 and node.applied_index >= target:
                return
            await asyncio.sleep(_POLL_S)
        raise PhalanxError(f"node {member.id} did not catch up within {STEP_WAIT_S_MAX:.0f} s")

    # -- showing ---------------------------------------------------------------------------------

    def table(self, statuses: list[MemberStatus], title: str) -> Table:
        table = Table(title=title)
        for name in ("node", "process", "role", "term", "commit", "applied", "revision"):
            table.add_column(name, justify="left" if name in {"process", "role"} else "right")
        for member, status in zip(self.record.members, statuses, strict=True):
            node = status.status
            process = (
                f"pid {member.pid}" if self.record.alive(member) else "[red]killed (SIGKILL)[/red]"
            )
            role = "-" if node is None else node.role
            if role == "leader":
                role = "[bold green]leader[/bold green]"
            table.add_row(
                str(member.id),
                process,
                role,
                "-" if node is None else str(node.term),
                "-" if node is None else str(node.commit_index),
                "-" if node is None else str(node.applied_index),
                "-" if node is None else str(node.revision),
            )
        return table


def _summary(console: Console, result: ActResult) -> None:
    table = Table(title="Every acknowledged write survived the leader's crash?", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("writes acknowledged", str(len(result.acknowledged)))
    table.add_row("  of them after the kill", str(result.acknowledged_after_kill))
    table.add_row("writes with an unknown outcome", str(len(result.unknown)))
    refused = ", ".join(f"{name} {n}" for name, n in sorted(result.errors.items()))
    table.add_row("writes refused", f"{len(result.failed)} ({refused})" if refused else "0")
    table.add_row("leaders", f"node {result.old_leader} (killed) -> node {result.new_leader}")
    table.add_row("new leader elected after", f"{result.new_leader_s:.2f} s")
    table.add_row("acknowledged writes read back (linearizable)", _missing(result.missing))
    table.add_row(
        "acknowledged writes held by the restarted node", _missing(result.missing_on_restarted)
    )
    table.add_row("act took", f"{result.elapsed_s:.1f} s")
    console.print(table)
    if result.proven:
        console.print(
            "[bold green]Proof holds[/bold green]: every write the cluster acknowledged was "
            "on a majority's disks before the answer, so losing the leader lost none of them."
        )
    else:
        console.print("[bold red]Proof FAILED[/bold red]: see the table above.")


def _missing(missing: list[bytes]) -> str:
    if not missing:
        return "[green]all[/green]"
    shown = ", ".join(key.decode() for key in missing[:5])
    return f"[red]{len(missing)} MISSING[/red] ({shown})"
