"""Chaos runs on real network namespaces (``--netns``): the address plan, the iptables
commands of a grudge, building and tearing down the network, and one real run.

The pure parts run everywhere (the network's commands go to an in-memory ``ip`` and
``iptables``); the tests marked ``needs_netns`` build real namespaces and are skipped
unless running as root with ``ip`` and ``iptables``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from phalanx.chaos import netns
from phalanx.chaos.cluster import ChaosCluster
from phalanx.chaos.history import read_jsonl
from phalanx.chaos.nemesis import FAULT_KINDS, PROXY_KINDS, grudge
from phalanx.chaos.netns import (
    NetnsError,
    NetnsNetwork,
    NetnsUnavailable,
    check_environment,
    heal_argv,
    node_address,
    partition_argv,
    plan_subnet,
    refused_faults,
    remove_leftovers,
)
from phalanx.chaos.runner import RunOptions, run_chaos
from phalanx.chaos.verdict import Verdict
from phalanx.cli.main import _register, cli


def _netns_available() -> bool:
    try:
        check_environment()
    except NetnsUnavailable:
        return False
    return True


needs_netns = pytest.mark.skipif(
    not _netns_available(), reason="needs root with ip and iptables (network namespaces)"
)

NET = ipaddress.IPv4Network


# -- the address plan and the commands --------------------------------------------------


def test_the_subnet_avoids_every_taken_network_and_depends_on_the_pid() -> None:
    first = plan_subnet(0, [])
    assert first == NET("10.200.0.0/24")
    assert plan_subnet(1, []) == NET("10.200.1.0/24")
    assert plan_subnet(256, []) == NET("10.201.0.0/24")
    # A default route overlaps everything and is ignored; a /16 skips 256 subnets.
    taken = [NET("0.0.0.0/0"), NET("10.200.0.0/16"), NET("10.201.0.7/32")]
    assert plan_subnet(0, taken) == NET("10.201.1.0/24")
    # Past the last candidate it wraps around to the first.
    assert plan_subnet(netns.SUBNETS_MAX - 1, [NET("10.254.255.0/24")]) == first


def test_no_free_subnet_is_a_typed_error() -> None:
    with pytest.raises(NetnsError, match="no free /24"):
        plan_subnet(7, [NET("10.0.0.0/8")])


def test_members_have_fixed_host_numbers_after_the_bridge() -> None:
    subnet = NET("10.210.3.0/24")
    assert [node_address(subnet, i) for i in (1, 2, 9)] == [
        "10.210.3.11",
        "10.210.3.12",
        "10.210.3.19",
    ]
    with pytest.raises(ValueError, match="node id"):
        node_address(subnet, 0)


NS = {i: f"phx42a-n{i}" for i in range(1, 6)}
ADDR = {i: f"10.200.42.{10 + i}" for i in range(1, 6)}


def test_a_grudge_becomes_input_and_output_drops_in_each_namespace() -> None:
    cuts = grudge([[2], [1, 3]], [1, 2, 3])
    assert [" ".join(argv) for argv in partition_argv(cuts, NS, ADDR)] == [
        "ip netns exec phx42a-n1 iptables -w -A INPUT -s 10.200.42.12 -j DROP",
        "ip netns exec phx42a-n1 iptables -w -A OUTPUT -d 10.200.42.12 -j DROP",
        "ip netns exec phx42a-n2 iptables -w -A INPUT -s 10.200.42.11,10.200.42.13 -j DROP",
        "ip netns exec phx42a-n2 iptables -w -A OUTPUT -d 10.200.42.11,10.200.42.13 -j DROP",
        "ip netns exec phx42a-n3 iptables -w -A INPUT -s 10.200.42.12 -j DROP",
        "ip netns exec phx42a-n3 iptables -w -A OUTPUT -d 10.200.42.12 -j DROP",
    ]


def _dropped(commands: list[list[str]]) -> set[tuple[str, str]]:
    """(namespace, address) for every address a namespace drops in both directions."""
    seen: dict[tuple[str, str], set[str]] = {}
    for argv in commands:
        ns, chain, addresses = argv[3], argv[7], argv[9]
        for address in addresses.split(","):
            seen.setdefault((ns, address), set()).add(chain)
    assert all(chains == {"INPUT", "OUTPUT"} for chains in seen.values())
    return set(seen)


def test_the_bridge_node_drops_nothing_and_the_ring_drops_non_neighbours() -> None:
    ids = [1, 2, 3, 4, 5]
    bridge = partition_argv(grudge([[1, 2, 3], [3, 4, 5]], ids), NS, ADDR)
    assert all(argv[3] != NS[3] for argv in bridge)
    left, right = (1, 2), (4, 5)
    assert _dropped(bridge) == {(NS[a], ADDR[b]) for a in left for b in right} | {
        (NS[a], ADDR[b]) for a in right for b in left
    }
    ring = [[1, 5, 2], [2, 1, 3], [3, 2, 4], [4, 3, 5], [5, 4, 1]]
    dropped = _dropped(partition_argv(grudge(ring, ids, views=True), NS, ADDR))
    assert (NS[1], ADDR[3]) in dropped
    assert (NS[1], ADDR[2]) not in dropped
    assert len(dropped) == 10  # each of 5 nodes drops its 2 non-neighbours


def test_heal_flushes_each_namespace() -> None:
    assert heal_argv(["a", "b"], iptables="/sbin/iptables") == [
        ["ip", "netns", "exec", "a", "/sbin/iptables", "-w", "-F"],
        ["ip", "netns", "exec", "b", "/sbin/iptables", "-w", "-F"],
    ]


def test_the_faults_that_need_the_admin_endpoint_or_the_proxies_are_refused() -> None:
    assert set(PROXY_KINDS) | {"toxic", "clock"} == set(refused_faults(FAULT_KINDS))
    assert refused_faults(["partition", "kill", "pause", "restart", "membership"]) == []
    with pytest.raises(ValueError, match="--netns cannot apply clock, toxic"):
        RunOptions(nemesis=["partition", "toxic", "clock"], netns=True)
    options = RunOptions(nemesis=["partition"], netns=True)
    assert "--netns" in options.command(Path("out"))
    assert "--netns" not in RunOptions(nemesis=["toxic"]).command(Path("out"))
    with pytest.raises(ValueError, match="proxies"):
        ChaosCluster(Path("unused"), 3, proxied=True, netns=True)


def test_the_command_line_refuses_netns_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _register()
    result = CliRunner().invoke(cli, ["chaos", "run", "--netns", "--nemesis", "partition"])
    assert result.exit_code == 2
    assert "--netns needs root" in result.output


def test_the_command_line_refuses_faults_netns_cannot_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns, "check_environment", lambda: None)
    _register()
    args = ["chaos", "campaign", "--netns", "--nemeses", "partition;kill,toxic", "--runs", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "--netns cannot apply toxic" in result.output


# -- building and tearing down, against an in-memory ip and iptables ---------------------


class FakeIp:
    """Keeps the links and namespaces that ``ip`` commands create and the root namespace's
    ``FORWARD`` rules that ``iptables`` commands change (its policy is ``DROP``, as Docker
    leaves it); fails the command whose argv contains ``fail_on``."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.links: set[str] = set()
        self.namespaces: set[str] = set()
        #: The root namespace's FORWARD rules, in chain order, without ``-A FORWARD``.
        self.forward: list[str] = []
        self.calls: list[list[str]] = []
        #: Every command, its program by base name (the network runs them by full path).
        self.commands: list[str] = []
        self.fail_on = fail_on

    def __call__(self, argv: Sequence[str]) -> str:
        program, args = Path(argv[0]).name, list(argv[1:])
        self.calls.append(args)
        self.commands.append(" ".join([program, *args]))
        if self.fail_on is not None and self.fail_on in " ".join(args):
            raise NetnsError(f"{' '.join(argv)}: exit status 2: RTNETLINK answers: File exists")
        if program == "iptables":
            return self._iptables(args)
        if args == ["-j", "link", "show"]:
            return json.dumps([{"ifname": name} for name in sorted(self.links)])
        if args == ["-j", "netns", "list"]:
            return json.dumps([{"name": name} for name in sorted(self.namespaces)])
        if args[:2] == ["link", "add"]:
            self.links.add(args[2])
        elif args[:2] == ["link", "del"]:
            self.links.remove(args[2])
        elif args[:2] == ["netns", "add"]:
            self.namespaces.add(args[2])
        elif args[:2] == ["netns", "del"]:
            self.namespaces.remove(args[2])
        return ""

    def _iptables(self, args: list[str]) -> str:
        wait, command, chain, spec = args[0], args[1], args[2], " ".join(args[3:])
        assert (wait, chain) == ("-w", "FORWARD"), args  # the root namespace: FORWARD only
        if command == "-S":
            rules = [f"-A FORWARD {rule}" for rule in self.forward]
            return "".join(f"{line}\n" for line in ["-P FORWARD DROP", *rules])
        if command == "-I":
            self.forward.insert(0, spec)
        elif command == "-D" and spec in self.forward:
            self.forward.remove(spec)
        else:
            raise NetnsError(f"iptables {' '.join(args)}: exit status 1: Bad rule")
        return ""


def _accept(bridge: str) -> str:
    return f"-i {bridge} -o {bridge} -j ACCEPT"


def test_the_network_is_named_after_its_owner_and_removed_on_exit() -> None:
    ip = FakeIp()
    with NetnsNetwork([1, 2, 3], runner=ip) as network:
        base = f"phx{os.getpid()}"
        assert network.bridge.startswith(base)
        assert ip.links == {network.bridge, *(f"{network.base}h{i}" for i in (1, 2, 3))}
        assert ip.namespaces == {f"{network.base}-n{i}" for i in (1, 2, 3)}
        assert all(len(name) <= 15 for name in ip.links)  # IFNAMSIZ
        assert network.wrap(2, ["phalanx", "node"])[-4:] == [
            "exec",
            f"{network.base}-n2",
            "phalanx",
            "node",
        ]
        assert network.address(2) == str(network.subnet.network_address + 12)
        network.partition({1: [2], 2: [1], 3: []})
        flushes = [c for c in ip.calls if c[-1] == "-F"]
        assert len(flushes) == 3  # a partition replaces whatever was there
        assert ip.forward == [_accept(network.bridge)]
    assert ip.links == set()
    assert ip.namespaces == set()
    assert ip.forward == []


def test_the_bridge_forwards_despite_a_drop_policy_and_only_its_rule_is_removed() -> None:
    ip = FakeIp()
    alive = os.getpid()
    others = [_accept("docker0"), _accept(f"phx{alive}zbr"), "-i phxabr -o phxabr -j DROP"]
    ip.forward = list(others)
    network = NetnsNetwork([1], runner=ip)
    br = network.bridge
    with network:
        # First in the chain, so that neither the DROP policy nor a later rule applies.
        assert ip.forward == [_accept(br), *others]
        built = ip.commands[ip.commands.index(f"ip link add {br} type bridge") :]
        assert built[:4] == [
            f"ip link add {br} type bridge",
            f"ip addr add {network.bridge_address}/24 dev {br}",
            f"iptables -w -I FORWARD -i {br} -o {br} -j ACCEPT",
            f"ip link set {br} up",
        ]
        before = len(ip.commands)
    removal = [c for c in ip.commands[before:] if c.startswith("iptables")]
    assert removal == [
        "iptables -w -S FORWARD",
        f"iptables -w -D FORWARD -i {br} -o {br} -j ACCEPT",
    ]
    assert ip.forward == others
    assert not any(" -P " in f" {c} " for c in ip.commands)  # the policy is never touched


def test_two_networks_of_one_process_get_different_names() -> None:
    ip = FakeIp()
    with NetnsNetwork([1], runner=ip) as first, NetnsNetwork([1], runner=ip) as second:
        assert first.base != second.base
        assert first.subnet != second.subnet
        assert len(ip.namespaces) == 2
    assert ip.namespaces == set()
    assert NetnsNetwork([1], runner=ip).base == first.base  # the letter is free again


def test_a_failed_setup_removes_what_it_made_and_says_why() -> None:
    ip = FakeIp(fail_on="netns add phx")
    network = NetnsNetwork([1, 2], runner=ip)
    ip.fail_on = f"netns add {network.base}-n2"
    with pytest.raises(NetnsError, match="File exists"), network:
        pass
    assert ip.links == set()
    assert ip.namespaces == set()
    assert ip.forward == []


def test_a_failed_teardown_can_be_returned_instead_of_raised() -> None:
    ip = FakeIp()
    network = NetnsNetwork([1, 2], runner=ip)
    network.setup()
    ip.fail_on = f"link del {network.base}h1"
    errors = network.teardown(raise_errors=False)
    assert [str(e) for e in errors] == [str(e) for e in network.teardown_errors]
    assert len(errors) == 1
    assert f"link del {network.base}h1" in str(errors[0])
    # Every other removal was still made.
    assert ip.links == {f"{network.base}h1"}
    assert ip.namespaces == set()
    assert ip.forward == []
    assert network.teardown() == []  # done: nothing is tried twice
    assert network.teardown_errors == []


def test_a_forward_rule_that_cannot_be_deleted_is_one_error_among_the_removals() -> None:
    ip = FakeIp()
    network = NetnsNetwork([1], runner=ip)
    network.setup()
    ip.fail_on = "-D FORWARD"
    errors = network.teardown(raise_errors=False)
    assert len(errors) == 1
    assert "-D FORWARD" in str(errors[0])
    assert ip.forward == [_accept(network.bridge)]
    assert ip.links == set()
    assert ip.namespaces == set()


def test_with_raises_a_failed_teardown_unless_the_body_failed() -> None:
    ip = FakeIp()
    with pytest.raises(NetnsError, match="File exists"), NetnsNetwork([1], runner=ip) as network:
        ip.fail_on = f"link del {network.bridge}"
    assert network.teardown_errors != []
    ip = FakeIp()
    with pytest.raises(KeyError) as raised, NetnsNetwork([1], runner=ip) as network:
        ip.fail_on = f"link del {network.bridge}"
        raise KeyError("the run's own failure")
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1
    assert "removing the network namespaces failed" in notes[0]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_leftovers_of_dead_owners_are_removed_and_nothing_else() -> None:
    ip = FakeIp()
    dead, alive = _dead_pid(), os.getpid()
    ip.links = {f"phx{dead}abr", f"phx{dead}ah1", f"phx{alive}bbr", "eth0", "phxother"}
    ip.namespaces = {f"phx{dead}a-n1", f"phx{alive}b-n1", "blue"}
    kept = [_accept(f"phx{alive}bbr"), _accept("docker0"), f"-i phx{dead}abr -j DROP"]
    ip.forward = [_accept(f"phx{dead}abr"), *kept, _accept(f"phx{dead}cbr")]
    removed = remove_leftovers(runner=ip, ip="ip", iptables="iptables")
    assert removed == sorted(
        [
            f"phx{dead}abr",
            f"phx{dead}ah1",
            f"phx{dead}a-n1",
            f"FORWARD {_accept(f'phx{dead}abr')}",
            f"FORWARD {_accept(f'phx{dead}cbr')}",  # its bridge already gone
        ]
    )
    assert ip.links == {f"phx{alive}bbr", "eth0", "phxother"}
    assert ip.namespaces == {f"phx{alive}b-n1", "blue"}
    assert ip.forward == kept


# -- real namespaces --------------------------------------------------------------------


def _ours() -> set[str]:
    """Links and namespaces named after this process."""
    links = json.loads(_sh("ip", "-j", "link", "show"))
    spaces = json.loads(_sh("ip", "-j", "netns", "list") or "[]")
    names = {link["ifname"] for link in links} | {ns["name"] for ns in spaces}
    return {name for name in names if name.startswith(f"phx{os.getpid()}")}


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout


def _forward() -> list[str]:
    """The root namespace's FORWARD rules, as ``iptables -S`` prints them."""
    return _sh("iptables", "-w", "-S", "FORWARD").splitlines()


def _bridged_packets_see_iptables() -> bool:
    path = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    return path.exists() and path.read_text().strip() == "1"


def _connects(argv_prefix: list[str], host: str, port: int) -> bool:
    script = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
    done = subprocess.run(
        [*argv_prefix, sys.executable, "-c", script], capture_output=True, timeout=10, check=False
    )
    return done.returncode == 0


def _wait_listening(host: str, port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise AssertionError(f"nothing listens on {host}:{port}")


@pytest.fixture
def listener() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=5)


@needs_netns
def test_drop_rules_cut_two_namespaces_and_heal_restores_them(
    listener: list[subprocess.Popen[bytes]],
) -> None:
    port = 7411
    with NetnsNetwork([1, 2]) as network:
        host = network.address(2)
        server = (
            f"import socket, time; s = socket.create_server(({host!r}, {port})); time.sleep(60)"
        )
        listener.append(subprocess.Popen(network.wrap(2, [sys.executable, "-c", server])))
        _wait_listening(host, port)  # from the root namespace, through the bridge
        from_1 = network.wrap(1, [])
        assert _connects(from_1, host, port)
        # The bridge's ACCEPT comes first in FORWARD: a DROP after it (here one of this
        # test's, for this bridge only; the host's policy is left alone) changes nothing.
        accept = f"-A FORWARD {' '.join(netns.forward_rule(network.bridge))}"
        assert _forward()[1] == accept  # after "-P FORWARD ..."
        drop = ["-i", network.bridge, "-o", network.bridge, "-j", "DROP"]
        _sh("iptables", "-w", "-A", "FORWARD", *drop)
        try:
            assert _connects(from_1, host, port)
            if _bridged_packets_see_iptables():  # otherwise FORWARD never sees them
                _sh("iptables", "-w", "-D", "FORWARD", *netns.forward_rule(network.bridge))
                try:
                    assert not _connects(from_1, host, port)
                finally:
                    _sh("iptables", "-w", "-I", "FORWARD", *netns.forward_rule(network.bridge))
        finally:
            _sh("iptables", "-w", "-D", "FORWARD", *drop)
        network.partition({1: [2], 2: [1]})
        assert len(network.rules(1)) == 2
        assert not _connects(from_1, host, port)
        assert _connects([], host, port)  # the runner is never cut
        network.heal()
        assert network.rules(1) == []
        assert _connects(from_1, host, port)
        listener[0].kill()
        listener[0].wait(timeout=5)
    assert _ours() == set()
    assert not any(network.bridge in rule for rule in _forward())


@needs_netns
def test_leftovers_of_a_dead_owner_are_removed_for_real() -> None:
    dead = _dead_pid()
    names = [f"phx{dead}zbr", f"phx{dead}z-n1"]
    _sh("ip", "link", "add", names[0], "type", "bridge")
    _sh("ip", "netns", "add", names[1])
    _sh("iptables", "-w", "-I", "FORWARD", *netns.forward_rule(names[0]))
    rule = " ".join(["FORWARD", *netns.forward_rule(names[0])])
    assert sorted([*names, rule]) == [n for n in remove_leftovers() if n in [*names, rule]]
    links = _sh("ip", "-j", "link", "show")
    assert names[0] not in links
    assert names[1] not in _sh("ip", "netns", "list")
    assert not any(names[0] in line for line in _forward())


@needs_netns
def test_a_partition_run_on_namespaces_is_valid_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    during: list[list[str]] = []
    setup = NetnsNetwork.setup

    def setup_and_look(network: NetnsNetwork) -> None:
        setup(network)
        during.append(_forward())

    monkeypatch.setattr(NetnsNetwork, "setup", setup_and_look)
    options = RunOptions(
        nodes=3,
        workload="register",
        nemesis=["partition"],
        time_limit_s=8.0,
        seed=21,
        concurrency=4,
        rate_hz=60.0,
        recovery_s=1.0,
        fault_s=(1.0, 2.0),
        quiet_s=(0.5, 1.0),
        netns=True,
    )
    result = run_chaos(options, tmp_path)
    assert result.verdict is Verdict.VALID, result.checker.results
    # While it ran, its bridge's ACCEPT was the first FORWARD rule; afterwards it is gone.
    assert len(during) == 1
    assert re.fullmatch(rf"-A FORWARD -i (phx{os.getpid()}[a-z]br) -o \1 -j ACCEPT", during[0][1])
    assert not any(f"phx{os.getpid()}" in rule for rule in _forward())
    assert result.counts["ok"] > 0
    assert "--netns" in result.command
    starts = [op for op in read_jsonl(tmp_path / "nemesis.jsonl") if op.f == "start-partition"]
    assert starts
    assert all(op.outcome.value == "ok" for op in starts)
    assert any(any(op.output["cut"].values()) for op in starts)
    assert result.nemesis_applied == len(starts)
    # The nodes served on their namespace's address, not on loopback.
    log = (tmp_path / "cluster" / "n1.log").read_text()
    found = re.search(r"serving peers on (10\.\d+\.\d+)\.11:", log)
    assert found is not None, log
    subnet = f"{found.group(1)}.0/24"
    # Nothing is left: no namespace (the rules lived there), no veth, no bridge, no route.
    assert _ours() == set()
    routes = _sh("ip", "-4", "route", "show", "table", "all")
    assert subnet not in routes
    rules = _sh("iptables", "-w", "-S")
    assert found.group(1) not in rules
