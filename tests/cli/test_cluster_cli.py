"""``phalanx cluster`` and ``phalanx kv`` as a user runs them, from one folder.

``cluster up`` (a separate process) starts detached node processes and returns; every later
command finds the cluster through ``./.phalanx/cluster.json`` (they run in this process to
save interpreter start-ups, except a watcher that runs beside a writer). Ports come from
``loopback.free_ports`` and are passed with ``--ports``, so runs never collide. Whatever
happens, the nodes recorded in cluster.json are killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loopback import free_ports
from phalanx.cli.local_cluster import (
    ClusterError,
    LocalCluster,
    create,
    is_node_process,
    node_supports,
    wait_exit,
)
from phalanx.cli.main import _register, cli
from phalanx.cli.txn_text import TxnTextError, parse_txn
from phalanx.kv.commands import CompareOp, CompareTarget, DeleteRange, Put, Range

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and subprocesses")

COMMAND_TIMEOUT_S = 60.0
# The default tick (election timeout 1-2 s): a loaded machine must not cause elections
# between the steps that read who leads.
TICK_MS = "100"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


class Folder:
    """The working directory the commands run from: in this process (``CliRunner``, the
    fast path) or, with ``own_process=True``, as a separate ``python -m phalanx.cli.main``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {k: v for k, v in os.environ.items() if k != "PHALANX_ENDPOINTS"}

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, own_process: bool = False
    ) -> Ran:
        if own_process:
            done = subprocess.run(
                [sys.executable, "-m", "phalanx.cli.main", *args],
                cwd=self.path,
                env=self.env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            ran = Ran(done.returncode, done.stdout, done.stderr)
        else:
            _register()
            result = CliRunner().invoke(cli, list(args), input=stdin)
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            ran = Ran(result.exit_code, result.stdout, result.stderr)
        if check:
            assert ran.returncode == 0, f"{args}: {ran.stdout}\n{ran.stderr}"
        return ran

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / ".phalanx" / "cluster.json").read_text())
        return data

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("cluster", "status", "--json").stdout)
        return data

    def kill_recorded(self) -> None:
        """SIGKILL every node the record names (the test's last line of defence)."""
        with contextlib.suppress(FileNotFoundError):
            for member in self.record()["members"]:
                pid = member["pid"]
                if pid and is_node_process(pid, member["data_dir"]):
                    os.kill(pid, signal.SIGKILL)
                    wait_exit([pid], COMMAND_TIMEOUT_S)  # reaps the nodes this process started


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Folder]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PHALANX_ENDPOINTS", raising=False)
    here = Folder(tmp_path)
    try:
        yield here
    finally:
        here.kill_recorded()


def ports_option(nodes: int) -> str:
    per_member = 3 if node_supports("http_listen") else 2
    return ",".join(str(p) for p in free_ports(nodes * per_member))


def test_a_local_cluster_from_up_to_down(folder: Folder) -> None:  # noqa: PLR0915 - one story
    # A separate process: the nodes it starts outlive it.
    up = folder.run(
        "cluster",
        "up",
        "--nodes",
        "3",
        "--ports",
        ports_option(3),
        "--tick-ms",
        TICK_MS,
        own_process=True,
    )
    assert "leader" in up.stdout
    record = folder.record()
    assert len(record["endpoints"]) == 3
    assert [m["id"] for m in record["members"]] == [1, 2, 3]
    pids = [m["pid"] for m in record["members"]]
    assert all(is_node_process(m["pid"], m["data_dir"]) for m in record["members"])

    status = folder.status()
    roles = sorted(m["role"] for m in status["members"])
    assert roles == ["follower", "follower", "leader"]
    assert all(m["alive"] for m in status["members"])
    leader = status["leader"]
    assert leader in {1, 2, 3}
    # Any cluster by its endpoints: no record, no pids.
    remote = json.loads(
        folder.run("cluster", "status", "--json", "--endpoints", record["endpoints"][0]).stdout
    )
    assert [m["id"] for m in remote["members"]] == [1]
    assert remote["members"][0]["pid"] is None
    assert remote["leader"] == leader
    table = folder.run("cluster", "status").stdout
    assert "leader" in table
    assert str(pids[0]) in table

    # kv: put, get, prefix, json, serializable, hex.
    assert folder.run("kv", "put", "greeting", "hello").stdout.startswith("OK revision ")
    folder.run("kv", "put", "app/a", "1")
    put = folder.run("kv", "put", "app/b", "two words")
    revision = int(put.stdout.split()[-1])
    assert folder.run("kv", "get", "greeting").stdout == "greeting\nhello\n"
    assert folder.run("kv", "get", "app/", "--prefix").stdout == "app/a\n1\napp/b\ntwo words\n"
    got = json.loads(folder.run("kv", "get", "app/", "--prefix", "--json", "--limit", "1").stdout)
    assert got["count"] == 2
    assert got["more"] is True
    assert [kv["key"] for kv in got["kvs"]] == ["app/a"]
    assert folder.run("kv", "get", "greeting", "--serializable").stdout == "greeting\nhello\n"
    not_hex = folder.run("kv", "get", "greeting", "--hex", check=False)
    assert not_hex.returncode == 2
    assert "not hex" in not_hex.stderr
    hex_get = folder.run("kv", "get", b"greeting".hex(), "--hex", "--print-value-only")
    assert hex_get.stdout == b"hello".hex() + "\n"
    assert folder.run("kv", "get", "missing").stdout == ""

    # watch: past events from a revision, bounded by --count.
    watched = folder.run("kv", "watch", "app/", "--prefix", "--rev", "1", "--count", "2")
    assert watched.stdout == "PUT\napp/a\n1\nPUT\napp/b\ntwo words\n"
    # A watch from the next revision sees a put made after it started.
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phalanx.cli.main",
            "kv",
            "watch",
            "live",
            "--rev",
            str(revision + 1),
            "--count",
            "1",
            "--json",
        ],
        cwd=folder.path,
        env=folder.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        folder.run("kv", "put", "live", "now")
        out, _ = watcher.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    event = json.loads(out)
    assert (event["type"], event["key"], event["value"]) == ("put", "live", "now")
    assert event["revision"] == revision + 1

    # txn: compares hold, the success branch runs.
    txn = folder.run(
        "kv",
        "txn",
        stdin='value("greeting") = "hello"\n\n'
        "put greeting bye\nget app/ --prefix\n\nget greeting\n",
    )
    assert txn.stdout.startswith("SUCCESS\n")
    assert "app/a\n1\n" in txn.stdout
    assert folder.run("kv", "get", "greeting", "--print-value-only").stdout == "bye\n"
    failed = folder.run(
        "kv", "txn", "--json", stdin='value("greeting") = "hello"\n\nput x 1\n\nget greeting\n'
    )
    document = json.loads(failed.stdout)
    assert document["succeeded"] is False
    assert document["ops"][0]["kvs"][0]["value"] == "bye"
    bad = folder.run("kv", "txn", stdin="nonsense here\n", check=False)
    assert bad.returncode != 0
    assert "line 1" in bad.stderr

    assert folder.run("kv", "del", "app/", "--prefix").stdout == "2\n"
    assert folder.run("kv", "get", "app/", "--prefix").stdout == ""

    # Leases: keys go with their lease.
    granted = folder.run("kv", "lease", "grant", "30").stdout
    lease_id = granted.split()[1]
    folder.run("kv", "put", "leased", "x", "--lease", lease_id)
    assert "kept alive" in folder.run("kv", "lease", "keep-alive", lease_id, "--once").stdout
    folder.run("kv", "lease", "revoke", lease_id)
    assert folder.run("kv", "get", "leased").stdout == ""

    # Kill the leader: the cluster goes on; restart it: it serves again.
    assert "killed" in folder.run("cluster", "kill", str(leader)).stdout
    after_kill = {m["id"]: m for m in folder.status()["members"]}
    assert after_kill[leader]["alive"] is False
    assert after_kill[leader]["health"] == "unreachable"
    folder.run("kv", "put", "after", "kill")
    folder.run("cluster", "restart", str(leader))
    assert all(m["alive"] for m in folder.status()["members"])
    assert folder.run("kv", "get", "after", "--print-value-only").stdout == "kill\n"

    # Down keeps the data: up again brings it back.
    assert "stopped 3 members" in folder.run("cluster", "down").stdout
    assert not any(
        is_node_process(p, m["data_dir"]) for p, m in zip(pids, record["members"], strict=True)
    )
    assert all(m["pid"] is None for m in folder.record()["members"])
    folder.run("cluster", "up")
    assert folder.run("kv", "get", "greeting", "--print-value-only").stdout == "bye\n"
    folder.run("cluster", "down", "--purge")
    assert not (folder.path / ".phalanx").exists()


def test_membership_add_and_remove_a_local_node(folder: Folder) -> None:
    if not node_supports("join"):
        pytest.skip("phalanx node has no --join")
    folder.run("cluster", "up", "--nodes", "3", "--ports", ports_option(3), "--tick-ms", TICK_MS)
    folder.run("kv", "put", "before", "add")
    added = folder.run("cluster", "member", "add")
    assert "member 4 added as a voter" in added.stdout
    members = {m["id"]: m for m in folder.status()["members"]}
    assert sorted(members) == [1, 2, 3, 4]
    assert members[4]["alive"]
    assert members[4]["health"] == "healthy"
    folder.run("kv", "put", "after", "add")
    direct = folder.run(
        "kv", "get", "before", "--serializable", "--endpoints", members[4]["endpoint"]
    )
    assert direct.stdout == "before\nadd\n"

    removed = folder.run("cluster", "member", "remove", "4")
    assert "member 4 removed" in removed.stdout
    assert [m["id"] for m in folder.record()["members"]] == [1, 2, 3]
    folder.run("kv", "put", "after", "remove")
    folder.run("cluster", "down", "--purge")


def test_up_refuses_a_port_in_use_and_starts_nothing(folder: Folder) -> None:
    ports = free_ports(9)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", ports[4]))
        taken.listen()
        up = folder.run("cluster", "up", "--ports", ",".join(map(str, ports)), check=False)
    if node_supports("http_listen"):
        assert up.returncode == 1
        assert f"port {ports[4]} is not free" in up.stderr
    else:
        assert "--ports" in up.stderr  # 9 ports for 3 members of 2: refused too
    assert not (folder.path / ".phalanx" / "cluster.json").exists()


def test_kv_without_a_cluster_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PHALANX_ENDPOINTS", raising=False)
    _register()
    result = CliRunner().invoke(cli, ["kv", "get", "x"])
    assert result.exit_code == 2
    assert "PHALANX_ENDPOINTS" in result.output
    assert "--endpoints" in result.output
    status = CliRunner().invoke(cli, ["cluster", "down"])
    assert status.exit_code == 1
    assert "cluster up" in status.output


def test_txn_text_parses_compares_and_both_branches() -> None:
    parsed = parse_txn(
        """# a comment does not end a section
        value("k") = "v 1"
        version(k) > 0
        mod("k") < 10
        create('k') != 3

        put k "new value"
        del dir/ --prefix
        get k --limit 5

        get k
        """
    )
    assert [(c.key, c.target, c.op, c.operand) for c in parsed.compare] == [
        (b"k", CompareTarget.VALUE, CompareOp.EQUAL, b"v 1"),
        (b"k", CompareTarget.VERSION, CompareOp.GREATER, 0),
        (b"k", CompareTarget.MOD_REVISION, CompareOp.LESS, 10),
        (b"k", CompareTarget.CREATE_REVISION, CompareOp.NOT_EQUAL, 3),
    ]
    assert parsed.success == (
        Put(b"k", b"new value"),
        DeleteRange(b"dir/", b"dir0"),
        Range(b"k", b"", 0, 5),
    )
    assert parsed.failure == (Range(b"k"),)
    only_ops = parse_txn("\nput a b\n")
    assert only_ops.compare == ()
    assert only_ops.success == (Put(b"a", b"b"),)
    assert parse_txn('value("6b") = "76"\n\nput 6b 77', hex_mode=True).success == (Put(b"k", b"w"),)


@pytest.mark.parametrize(
    "text",
    [
        "value(k) ~ 1",
        "version(k) = notanumber",
        'value("k") = "a" "b"',
        "\nput onlykey",
        "\nfrob k",
        "\nget k --limit",
        "a=1\n\nput a b\n\nput a c\n\nput a d",
    ],
)
def test_txn_text_rejects_malformed_lines(text: str) -> None:
    with pytest.raises(TxnTextError, match="line"):
        parse_txn(text)


def test_the_record_round_trips_and_names_its_problems(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="no local cluster"):
        LocalCluster.load(tmp_path)
    (tmp_path / "cluster.json").write_text("{not json")
    with pytest.raises(ClusterError, match="not a cluster record"):
        LocalCluster.load(tmp_path)
    with pytest.raises(ClusterError, match="--nodes"):
        create(tmp_path, 10)
    with pytest.raises(ClusterError, match="4 distinct ports"):
        create(tmp_path, 2, http=False, ports=[1, 1, 2, 3])

    ports = free_ports(6)
    record = create(tmp_path, 3, http=False, ports=ports, tick_ms=25, fsync=False)
    assert [(m.peer, m.client) for m in record.members] == [
        (f"127.0.0.1:{ports[2 * k]}", f"127.0.0.1:{ports[2 * k + 1]}") for k in range(3)
    ]
    assert record.spec().count("=") == 3
    argv = record.argv(record.members[0])
    assert argv[argv.index("--tick-ms") + 1] == "25"
    assert "--no-fsync" in argv
    assert "--join" not in argv
    assert "--http-listen" not in argv
    record.save()
    again = LocalCluster.load(tmp_path)
    assert again == record
    assert json.loads((tmp_path / "cluster.json").read_text())["endpoints"] == [
        m.client for m in record.members
    ]
    assert not record.alive(record.members[0])  # recorded, never started
