"""``phalanx cluster``: start, inspect, change and stop a cluster of ``phalanx node`` processes.

``up`` starts a local cluster (processes on 127.0.0.1, data under ``./.phalanx`` or
``--data-dir``) and records it in ``<data-dir>/cluster.json``; the other commands find it
there, so from the same folder they need no flags::

    phalanx cluster up --nodes 3
    phalanx cluster status
    phalanx cluster kill 2 && phalanx cluster restart 2
    phalanx cluster member add          # a fourth local node, added as a learner, promoted
    phalanx cluster down --purge

``status`` and ``member`` also work on any cluster given by ``--endpoints`` or
``$PHALANX_ENDPOINTS``. See docs/cli.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

from phalanx.cli.local_cluster import (
    CLUSTER_FILE,
    DEFAULT_DATA_DIR,
    LEADER_WAIT_S_MAX,
    NODES_MAX,
    ClusterError,
    LocalCluster,
    LocalMember,
    MemberStatus,
    collect_status,
    create,
    new_member,
    node_supports,
    wait_leader,
)
from phalanx.errors import PhalanxError

__all__ = ["cluster"]

T = TypeVar("T")

#: Every client call of these commands, retries included.
CALL_TIMEOUT_S: Final = 20.0
#: How long ``member add`` waits for the new member to catch up before promoting it.
CATCH_UP_WAIT_S_MAX: Final = 30.0
#: Width of tables written to a file or a pipe.
WIDE_COLUMNS: Final = 120


def _data_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="The local cluster's directory (its cluster.json, node data and logs).",
    )(fn)


def _endpoints_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--endpoints",
        default=None,
        help="Client addresses host:port,... of any cluster (default: $PHALANX_ENDPOINTS, "
        "else the local cluster's record).",
    )(fn)


def _console() -> Console:
    """A console; a wide one when the output is not a terminal (tables are not cut)."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, WIDE_COLUMNS))


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def _load(data_dir: str) -> LocalCluster:
    try:
        return LocalCluster.load(data_dir)
    except ClusterError as exc:
        raise _fail(str(exc)) from None


def _local_or_none(data_dir: str) -> LocalCluster | None:
    try:
        return LocalCluster.load(data_dir)
    except ClusterError:
        return None


def _endpoints(given: str | None, data_dir: str) -> list[str]:
    """``--endpoints``, else ``$PHALANX_ENDPOINTS``, else the record in ``data_dir``."""
    from phalanx.cli.endpoints import resolve_endpoints

    record = Path(data_dir) / CLUSTER_FILE
    try:
        return list(resolve_endpoints(given, cluster_file=record))
    except (ValueError, PhalanxError) as exc:
        raise _fail(str(exc)) from None


def _call(endpoints: Sequence[str], call: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``call(client)`` with an ``AsyncClient`` of ``endpoints``; errors become messages."""
    from phalanx.cli.endpoints import client_tls
    from phalanx.client import AsyncClient

    async def main() -> T:
        async with AsyncClient(
            endpoints, total_timeout_s=CALL_TIMEOUT_S, ssl=client_tls()
        ) as client:
            return await call(client)

    try:
        return asyncio.run(main())
    except PhalanxError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None


# -- the group ----------------------------------------------------------------------------------


@click.group()
def cluster() -> None:
    """Run a local cluster of node processes, inspect and change any cluster."""


@cluster.command()
@click.option(
    "--nodes", default=3, show_default=True, type=click.IntRange(1, NODES_MAX), help="Members."
)
@_data_dir_option
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    default=None,
    help="First port; member k uses the ports from base + 2k (3k when nodes serve HTTP). "
    "Default: ports the system has free.",
)
@click.option(
    "--ports",
    default=None,
    help="Explicit ports, comma-separated: peer, client (and http when nodes serve it) of "
    "member 1, then member 2...",
)
@click.option("--no-fsync", is_flag=True, help="Do not fsync the log (benchmarks only: unsafe).")
@click.option(
    "--tick-ms",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Raft tick of every node; the election timeout is 10 to 20 ticks.",
)
@click.option("--cluster-id", default="phalanx", show_default=True, help="Cluster name.")
def up(
    nodes: int,
    data_dir: str,
    base_port: int | None,
    ports: str | None,
    no_fsync: bool,
    tick_ms: int,
    cluster_id: str,
) -> None:
    """Start a local cluster and wait until it has elected a leader.

    The nodes run detached (they outlive this command); their logs are <data-dir>/nN.log.
    When <data-dir> already holds a stopped cluster, its members are started again with
    their data and ports (the other options are then ignored).
    """
    console = _console()
    record = _local_or_none(data_dir)
    if record is not None:
        running = [m.id for m in record.members if record.alive(m)]
        if running:
            raise _fail(
                f"a cluster already runs from {data_dir} (members {running}); "
                "`phalanx cluster status` shows it, `phalanx cluster down` stops it"
            )
        console.print(f"Starting the stopped cluster recorded in {record.path}.")
    else:
        try:
            port_list = [int(p) for p in ports.split(",")] if ports else None
        except ValueError:
            raise click.BadParameter(
                f"{ports!r}: integers expected", param_hint="--ports"
            ) from None
        try:
            record = create(
                data_dir,
                nodes,
                base_port=base_port,
                cluster_id=cluster_id,
                tick_ms=tick_ms,
                fsync=not no_fsync,
                ports=port_list,
            )
        except ClusterError as exc:
            raise _fail(str(exc)) from None
    _start_and_wait(record, record.members)
    console.print(_status_table(record, _statuses(record)))
    endpoints = ",".join(record.endpoints)
    if Path(record.root) == (Path.cwd() / DEFAULT_DATA_DIR).resolve():
        hint = "From this folder, try: phalanx kv put hello world && phalanx kv get hello"
    else:
        hint = f"Elsewhere, first: export PHALANX_ENDPOINTS={endpoints}"
    console.print(f"Endpoints: {endpoints}\n{hint}")


def _start_and_wait(record: LocalCluster, members: Sequence[LocalMember]) -> None:
    """Start ``members``, record the pids, wait for a leader; stop them all on failure."""
    try:
        for member in members:
            record.start(member)
        record.save()
        wait_leader(record, LEADER_WAIT_S_MAX)
    except ClusterError as exc:
        record.stop(members)
        record.save()
        raise _fail(str(exc)) from None
    except BaseException:
        record.stop(members)
        record.save()
        raise


def _statuses(record: LocalCluster) -> list[MemberStatus]:
    return asyncio.run(
        collect_status([m.client for m in record.members], http=[m.http for m in record.members])
    )


@cluster.command()
@_data_dir_option
@_endpoints_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(data_dir: str, endpoints: str | None, as_json: bool) -> None:
    """Each member's role, term, leader, commit and applied index, revision and health."""
    record = None
    if endpoints is None and not os.environ.get("PHALANX_ENDPOINTS"):
        record = _local_or_none(data_dir)
    if record is not None:
        statuses = _statuses(record)
        rows = [_row(s, m, record.alive(m)) for s, m in zip(statuses, record.members, strict=True)]
    else:
        addresses = _endpoints(endpoints, data_dir)
        statuses = asyncio.run(collect_status(addresses))
        rows = [_row(s, None, None) for s in statuses]
    if as_json:
        leaders = {r["leader"] for r in rows if r["leader"]}
        document = {
            "cluster_id": next((s.status.cluster_id for s in statuses if s.status), None),
            "leader": leaders.pop() if len(leaders) == 1 else None,
            "members": rows,
        }
        click.echo(json.dumps(document, indent=2))
        return
    _console().print(
        _status_table(record, statuses)
        if record is not None
        else _table(rows, title="Cluster members")
    )
    if not any(s.status is not None for s in statuses):
        raise SystemExit(1)


def _role(node: Any) -> str:
    """The node's role, ``learner`` for a follower that does not vote."""
    learner = any(m.node_id == node.node_id and m.learner for m in node.members)
    return "learner" if learner and node.role == "follower" else str(node.role)


def _row(status: MemberStatus, member: LocalMember | None, alive: bool | None) -> dict[str, Any]:
    node = status.status
    return {
        "id": member.id if member is not None else (node.node_id if node else None),
        "endpoint": status.endpoint,
        "peer": member.peer if member is not None else None,
        "http": member.http if member is not None else None,
        "pid": member.pid if member is not None else None,
        "alive": alive,
        "role": _role(node) if node else None,
        "term": node.term if node else None,
        "leader": node.leader if node else None,
        "commit_index": node.commit_index if node else None,
        "applied_index": node.applied_index if node else None,
        "revision": node.revision if node else None,
        "health": status.health,
        "error": status.error,
    }


def _status_table(record: LocalCluster | None, statuses: Sequence[MemberStatus]) -> Table:
    if record is None:
        return _table([_row(s, None, None) for s in statuses], title="Cluster members")
    rows = [_row(s, m, record.alive(m)) for s, m in zip(statuses, record.members, strict=True)]
    return _table(rows, title=f"Local cluster {record.cluster_id} ({record.root})")


_HEALTH_STYLE: Final = {"healthy": "green", "catching up": "yellow", "unreachable": "red"}


def _table(rows: Sequence[dict[str, Any]], *, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", justify="right")
    table.add_column("address", no_wrap=True)
    for name in ("pid", "role", "term", "leader", "commit", "applied", "rev"):
        table.add_column(name, justify="left" if name == "role" else "right", no_wrap=True)
    table.add_column("health", no_wrap=True)

    def text(value: object) -> str:
        return "-" if value is None else str(value)

    for row in rows:
        pid = text(row["pid"])
        if row["alive"] is not None:
            if row["pid"] is None:
                pid = "[red]stopped[/red]"
            else:
                pid = f"[green]{pid}[/green]" if row["alive"] else f"[red]{pid} dead[/red]"
        role = text(row["role"])
        if role == "leader":
            role = f"[bold green]{role}[/bold green]"
        style = _HEALTH_STYLE.get(row["health"], "yellow")
        table.add_row(
            text(row["id"]),
            row["endpoint"],
            pid,
            role,
            text(row["term"]),
            text(row["leader"] or None),
            text(row["commit_index"]),
            text(row["applied_index"]),
            text(row["revision"]),
            f"[{style}]{row['health']}[/{style}]",
        )
    return table


@cluster.command()
@_data_dir_option
@click.option("--purge", is_flag=True, help="Also delete the nodes' data, logs and the record.")
def down(data_dir: str, purge: bool) -> None:
    """Stop every member: SIGTERM, a bounded wait, then SIGKILL for stragglers."""
    record = _load(data_dir)
    killed = record.stop(record.members)
    record.save()
    for node_id in killed:
        click.echo(f"member {node_id} did not stop in time: killed")
    click.echo(f"stopped {len(record.members)} members")
    if purge:
        _purge(record)
        click.echo(f"deleted the cluster's data in {record.root}")


def _purge(record: LocalCluster) -> None:
    for member in record.members:
        shutil.rmtree(member.data_dir, ignore_errors=True)
        Path(member.log).unlink(missing_ok=True)
    record.path.unlink(missing_ok=True)
    root = Path(record.root)
    # Members removed earlier may have left their directories: take what this tool made.
    for entry in root.glob("n*"):
        if re.fullmatch(r"n\d+", entry.name) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif re.fullmatch(r"n\d+\.log", entry.name):
            entry.unlink(missing_ok=True)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


@cluster.command()
@click.argument("node_id", type=int)
@_data_dir_option
def kill(node_id: int, data_dir: str) -> None:
    """SIGKILL one member's process (a crash: nothing is closed or flushed)."""
    record = _load(data_dir)
    member = _member(record, node_id)
    if not record.alive(member):
        raise _fail(f"member {node_id} is not running")
    record.kill(member)
    record.save()
    click.echo(f"member {node_id} killed (SIGKILL)")


@cluster.command()
@click.argument("node_id", type=int)
@_data_dir_option
def restart(node_id: int, data_dir: str) -> None:
    """Restart one member from its data directory (stopping it first when it runs)."""
    record = _load(data_dir)
    member = _member(record, node_id)
    if record.alive(member):
        record.stop([member])
    record.start(member)
    record.save()
    try:
        _wait_serving(member)
    except ClusterError as exc:
        raise _fail(
            f"{exc}; its log ({member.log}) ends with:\n{record.log_tail(member)}"
        ) from None
    click.echo(f"member {node_id} restarted (pid {member.pid})")


def _member(record: LocalCluster, node_id: int) -> LocalMember:
    try:
        return record.member(node_id)
    except ClusterError as exc:
        raise _fail(str(exc)) from None


def _wait_serving(member: LocalMember, timeout_s: float = LEADER_WAIT_S_MAX) -> MemberStatus:
    """Wait until ``member`` answers a status request and knows a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        (status,) = asyncio.run(collect_status([member.client], timeout_s=0.5))
        if status.status is not None and status.status.leader != 0:
            return status
        if time.monotonic() >= deadline:
            raise ClusterError(f"member {member.id} did not join a leader within {timeout_s} s")
        time.sleep(0.1)


# -- membership ---------------------------------------------------------------------------------


@cluster.group()
def member() -> None:
    """Add, promote and remove members at runtime (joint consensus underneath)."""


@member.command("add")
@click.argument("node_id", type=int, required=False)
@click.option("--peer", default=None, help="An external node's peer address host:port.")
@click.option("--client", "client_address", default=None, help="Its client address host:port.")
@click.option("--learner", is_flag=True, help="Leave the new member a learner (no vote).")
@click.option(
    "--base-port", type=click.IntRange(1024, 65000), default=None, help="Ports of a local member."
)
@_data_dir_option
@_endpoints_option
def add(
    node_id: int | None,
    peer: str | None,
    client_address: str | None,
    learner: bool,
    base_port: int | None,
    data_dir: str,
    endpoints: str | None,
) -> None:
    """Add a member. With --peer and --client: an external node (start it afterwards with
    `phalanx node --join`). Without: a new local node process, started with --join, promoted
    to voter once it has caught up (unless --learner)."""
    if peer is not None or client_address is not None:
        if node_id is None or peer is None or client_address is None:
            raise _fail("an external member needs NODE_ID, --peer and --client")
        addresses = _endpoints(endpoints, data_dir)
        learner_first = learner

        async def add_external(client: Any) -> Any:
            return await client.add_member(node_id, peer, client_address, learner=learner_first)

        _call(addresses, add_external)
        kind = "learner" if learner else "voter"
        click.echo(
            f"member {node_id} added as a {kind}; start it with: phalanx node --id {node_id} "
            f"--peer-listen {peer} --client-listen {client_address} --join --cluster ..."
        )
        return
    if not node_supports("join"):
        raise _fail("this phalanx node has no --join: add external nodes with --peer/--client")
    record = _load(data_dir)
    try:
        new = new_member(record, base_port=base_port)
    except ClusterError as exc:
        raise _fail(str(exc)) from None
    if node_id is not None:
        if any(m.id == node_id for m in record.members):
            raise _fail(f"member {node_id} exists already")
        new.id = node_id
        new.data_dir = str(Path(record.root) / f"n{node_id}")
        new.log = str(Path(record.root) / f"n{node_id}.log")
    live = [m.client for m in record.members if record.alive(m)]
    if not live:
        raise _fail("no member of the local cluster runs")

    async def add_learner(client: Any) -> Any:
        return await client.add_member(new.id, new.peer, new.client, learner=True)

    _call(live, add_learner)
    record.members.append(new)
    record.start(new)
    record.save()
    try:
        _wait_caught_up(live, new)
    except ClusterError as exc:
        raise _fail(f"{exc}; its log ({new.log}) ends with:\n{record.log_tail(new)}") from None
    if not learner:

        async def promote_new(client: Any) -> Any:
            return await client.promote_member(new.id)

        _call(live, promote_new)
    kind = "learner" if learner else "voter"
    click.echo(f"member {new.id} added as a {kind} (pid {new.pid}, client {new.client})")


def _wait_caught_up(endpoints: Sequence[str], new: LocalMember) -> None:
    """Wait until ``new`` has applied what the leader had committed when we started."""
    statuses = asyncio.run(collect_status(list(endpoints)))
    target = max((s.status.commit_index for s in statuses if s.status), default=0)
    deadline = time.monotonic() + CATCH_UP_WAIT_S_MAX
    while True:
        (status,) = asyncio.run(collect_status([new.client], timeout_s=0.5))
        if status.status is not None and status.status.applied_index >= target:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"member {new.id} did not catch up within {CATCH_UP_WAIT_S_MAX:.0f} s"
            )
        time.sleep(0.1)


@member.command("promote")
@click.argument("node_id", type=int)
@_data_dir_option
@_endpoints_option
def promote(node_id: int, data_dir: str, endpoints: str | None) -> None:
    """Make the learner NODE_ID a voter."""

    async def call(client: Any) -> Any:
        return await client.promote_member(node_id)

    _call(_endpoints(endpoints, data_dir), call)
    click.echo(f"member {node_id} promoted to voter")


@member.command("remove")
@click.argument("node_id", type=int)
@click.option("--purge", is_flag=True, help="Also delete a local member's data and log.")
@_data_dir_option
@_endpoints_option
def remove(node_id: int, purge: bool, data_dir: str, endpoints: str | None) -> None:
    """Remove NODE_ID from the cluster; a local member's process is stopped too."""
    record = _local_or_none(data_dir) if endpoints is None else None
    if record is not None:
        addresses = [m.client for m in record.members if m.id != node_id and record.alive(m)]
    else:
        addresses = _endpoints(endpoints, data_dir)
    if not addresses:
        raise _fail("no member to ask: is the cluster running?")

    async def call(client: Any) -> Any:
        return await client.remove_member(node_id)

    _call(addresses, call)
    click.echo(f"member {node_id} removed")
    if record is not None and any(m.id == node_id for m in record.members):
        removed = record.member(node_id)
        record.stop([removed])
        record.members.remove(removed)
        record.save()
        if purge:
            shutil.rmtree(removed.data_dir, ignore_errors=True)
            Path(removed.log).unlink(missing_ok=True)
        click.echo(f"its local process is stopped{'; its data deleted' if purge else ''}")
