"""A chaos cluster's network made of real Linux network namespaces, cut with iptables.

:class:`NetnsNetwork` gives every member of a :class:`~phalanx.chaos.cluster.ChaosCluster`
started with ``netns`` its own network namespace, so that a partition is a real one: packets
between two namespaces are dropped by the kernel (iptables ``DROP`` rules), not by the
node's own transport. As root it builds, in :meth:`~NetnsNetwork.__enter__`:

* one bridge in the root namespace, ``<base>br``, with the address ``.1`` of a private
  ``/24`` (:func:`plan_subnet`: ``10.200.0.0/24`` and up, one that no route or address of
  this machine overlaps);
* per member ``i``: a namespace ``<base>-n<i>`` with ``lo`` up, a veth pair ``<base>h<i>``
  (on the bridge) / ``<base>n<i>`` (inside the namespace) and the address ``.<10 + i>``;
* one rule in the root namespace's ``FORWARD`` chain, first in it, that accepts what the
  bridge forwards between its own ports (:func:`forward_rule`). With
  ``bridge-nf-call-iptables`` set, bridged packets traverse that chain, and a host whose
  policy there is ``DROP`` (as Docker leaves it) would otherwise cut every member off.
  The host's policy and its other rules are left alone.

``<base>`` is ``phx<pid><letter>``: the owner's pid, and a letter per network the process
holds at a time. :meth:`~NetnsNetwork.teardown` (and so ``with``) removes all of it
whatever happened (the partition rules live in the namespaces and go with them; the
``FORWARD`` rule names the bridge and is deleted by that name); :func:`remove_leftovers`
removes what runs whose owner has died left behind (``python -m phalanx.chaos.netns
cleanup``), and each new network calls it first.

A removal that fails must not throw away a run that otherwise finished:
``teardown(raise_errors=False)`` tries every removal and returns the failures (also kept in
:attr:`~NetnsNetwork.teardown_errors`) instead of raising the first.

The runner stays in the root namespace and reaches the members' client ports through the
bridge; :meth:`~NetnsNetwork.wrap` puts a member's command in its namespace
(``ip netns exec``, which execs the command: the child's pid is the member's).
:meth:`~NetnsNetwork.partition` applies a grudge (:func:`~phalanx.chaos.nemesis.grudge`:
each member's cut peers) as ``DROP`` rules on ``INPUT`` (from the cut peers) and ``OUTPUT``
(to them) in each member's namespace; :meth:`~NetnsNetwork.heal` flushes them.

Every command is an argument vector run by :func:`subprocess.run` with a timeout
(:data:`COMMAND_TIMEOUT_S`). Errors: :class:`NetnsUnavailable` when this machine cannot do
it (not root, no ``ip`` or ``iptables``), raised by :func:`check_environment` before
anything is changed; :class:`NetnsError` when a command fails, with its argv and stderr.
Both are :class:`~phalanx.errors.PhalanxError`.

Faults that need a member's admin endpoint (``toxic``, ``clock``: loopback-only, inside the
namespace, out of the runner's reach) or the peer proxies (``bandwidth``, ``reset``,
``slow-close``, ``timeout``) are not available in this mode: :func:`refused_faults` names
them, and the runner and the command line refuse them up front.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import ClassVar, Final

from phalanx.errors import PhalanxError

__all__ = [
    "COMMAND_TIMEOUT_S",
    "REFUSED_KINDS",
    "NetnsError",
    "NetnsNetwork",
    "NetnsUnavailable",
    "check_environment",
    "forward_rule",
    "heal_argv",
    "node_address",
    "partition_argv",
    "plan_subnet",
    "refused_faults",
    "remove_leftovers",
]

#: How long one ``ip`` or ``iptables`` command may take.
COMMAND_TIMEOUT_S: Final = 10.0
#: Fault kinds that cannot run on namespaces: the admin endpoint's and the proxies'.
REFUSED_KINDS: Final = ("toxic", "clock", "bandwidth", "reset", "slow-close", "timeout")
#: The name prefix of everything this module creates.
PREFIX: Final = "phx"
#: Networks one process may hold at a time (one letter each).
NETWORKS_PER_PROCESS_MAX: Final = 26
#: Where the candidate subnets start, and how many /24s there are: 10.200.0.0 to 10.254.255.0.
SUBNET_FIRST: Final = ipaddress.IPv4Network("10.200.0.0/24")
SUBNETS_MAX: Final = 55 * 256
#: The last octet of member ``i``'s address is ``NODE_HOST_OFFSET + i``.
NODE_HOST_OFFSET: Final = 10
#: Most members one network may have (``.11`` to ``.250``).
NODES_MAX: Final = 240
_STDERR_CHARS_MAX: Final = 2_000

_NAMESPACE_RE: Final = re.compile(rf"^{PREFIX}(\d+)([a-z])-n\d+$")
_LINK_RE: Final = re.compile(rf"^{PREFIX}(\d+)([a-z])(?:br|h\d+|n\d+)$")
_BRIDGE_RE: Final = re.compile(rf"^{PREFIX}(\d+)([a-z])br$")

Runner = Callable[[Sequence[str]], str]


class NetnsError(PhalanxError):
    """An ``ip``/``iptables`` command failed; the message holds its argv and stderr."""


class NetnsUnavailable(NetnsError):
    """This machine cannot run a chaos cluster on network namespaces (not root, or no
    ``ip``/``iptables``)."""


def check_environment() -> None:
    """Raise :class:`NetnsUnavailable` unless running as root with ``ip`` and ``iptables``."""
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NetnsUnavailable("--netns needs root (it creates namespaces, veths and a bridge)")
    if missing:
        raise NetnsUnavailable(
            f"--netns needs {' and '.join(missing)} on PATH (Debian: apt-get install -y "
            f"{' '.join('iproute2' if t == 'ip' else t for t in missing)})"
        )


def refused_faults(kinds: Iterable[str]) -> list[str]:
    """The fault kinds among ``kinds`` that a cluster on namespaces cannot apply."""
    return sorted({k for k in kinds if k in REFUSED_KINDS})


def run_command(argv: Sequence[str], *, input_text: str | None = None) -> str:
    """Run ``argv``; its stdout, or :class:`NetnsError` with its stderr."""
    try:
        done = subprocess.run(  # noqa: S603 - argv built here, never by a shell
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{_shown(argv)}: no answer within {COMMAND_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise NetnsError(f"{_shown(argv)}: {exc}") from exc
    if done.returncode != 0:
        stderr = done.stderr.strip()[:_STDERR_CHARS_MAX] or "(no stderr)"
        raise NetnsError(f"{_shown(argv)}: exit status {done.returncode}: {stderr}")
    return done.stdout


def _shown(argv: Sequence[str]) -> str:
    return " ".join(argv)


# -- the pure part ------------------------------------------------------------------------


def plan_subnet(pid: int, taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A /24 from ``10.200.0.0/24`` up that overlaps none of ``taken``, the first free one
    from a place given by ``pid`` (so that runs of different processes differ)."""
    busy = [net for net in taken if net.prefixlen > 0]  # a default route overlaps everything
    first = int(SUBNET_FIRST.network_address)
    for k in range(SUBNETS_MAX):
        index = (pid + k) % SUBNETS_MAX
        candidate = ipaddress.IPv4Network((first + 256 * index, 24))
        if not any(candidate.overlaps(net) for net in busy):
            return candidate
    raise NetnsError(f"no free /24 left in {SUBNET_FIRST} .. 10.254.255.0/24")


def node_address(subnet: ipaddress.IPv4Network, node_id: int) -> str:
    """Member ``node_id``'s address in ``subnet`` (the bridge has ``.1``)."""
    if not 1 <= node_id <= NODES_MAX:
        raise ValueError(f"node id: 1..{NODES_MAX}, got {node_id}")
    return str(subnet.network_address + NODE_HOST_OFFSET + node_id)


def partition_argv(
    cuts: Mapping[int, Sequence[int]],
    namespace: Mapping[int, str],
    address: Mapping[int, str],
    *,
    ip: str = "ip",
    iptables: str = "iptables",
) -> list[list[str]]:
    """The commands that drop, in each member's namespace, what comes from and goes to
    its cut peers (``cuts``: a grudge); members that cut nobody get no command."""
    commands: list[list[str]] = []
    for node_id in sorted(cuts):
        peers = sorted(cuts[node_id])
        if not peers:
            continue
        addresses = ",".join(address[p] for p in peers)
        prefix = [ip, "netns", "exec", namespace[node_id], iptables, "-w"]
        commands.append([*prefix, "-A", "INPUT", "-s", addresses, "-j", "DROP"])
        commands.append([*prefix, "-A", "OUTPUT", "-d", addresses, "-j", "DROP"])
    return commands


def forward_rule(bridge: str) -> list[str]:
    """The ``FORWARD`` rule (without chain command) that accepts what ``bridge`` forwards
    between its own ports, as ``iptables -S`` prints it after ``-A FORWARD``."""
    return ["-i", bridge, "-o", bridge, "-j", "ACCEPT"]


def _forward_bridges(listed: str) -> list[str]:
    """The bridges named by rules of :func:`forward_rule`'s form in ``iptables -S FORWARD``
    output, once per rule (a rule inserted twice is listed twice)."""
    bridges: list[str] = []
    for line in listed.splitlines():
        words = line.split()
        if (
            len(words) == 8
            and words[:2] == ["-A", "FORWARD"]
            and words[2:] == forward_rule(words[3])
        ):
            bridges.append(words[3])
    return bridges


def heal_argv(
    namespaces: Iterable[str], *, ip: str = "ip", iptables: str = "iptables"
) -> list[list[str]]:
    """The commands that flush every rule of the filter table in each namespace (they are
    all this module's: the namespaces are)."""
    return [[ip, "netns", "exec", ns, iptables, "-w", "-F"] for ns in namespaces]


# -- the network --------------------------------------------------------------------------


class NetnsNetwork:
    """A bridge and one namespace per member of ``ids``; see the module docstring.

    Construction checks the environment (:class:`NetnsUnavailable`) and picks the subnet;
    nothing is created before ``with`` (or :meth:`setup`). ``runner`` runs one command
    (the tests give a recording one).
    """

    _letters_in_use: ClassVar[set[str]] = set()

    def __init__(self, ids: Sequence[int], *, runner: Runner | None = None) -> None:
        if not ids or len(ids) > NODES_MAX:
            raise ValueError(f"members: 1..{NODES_MAX}, got {len(ids)}")
        self._run: Runner = runner or run_command
        if runner is None:
            check_environment()
        self.ip = shutil.which("ip") or "ip"
        self.iptables = shutil.which("iptables") or "iptables"
        self.ids = tuple(ids)
        self.pid = os.getpid()
        letter = next(
            (
                chr(ord("a") + k)
                for k in range(NETWORKS_PER_PROCESS_MAX)
                if chr(ord("a") + k) not in self._letters_in_use
            ),
            None,
        )
        if letter is None:
            raise NetnsError(f"more than {NETWORKS_PER_PROCESS_MAX} networks in one process")
        self._letter = letter
        self._letters_in_use.add(letter)
        # A network dropped without ever being built gives its letter back too.
        weakref.finalize(self, self._letters_in_use.discard, letter)
        self.base = f"{PREFIX}{self.pid}{letter}"
        self.bridge = f"{self.base}br"
        # Apart per letter too: two networks of one process may be planned before either
        # exists (and so before its route shows).
        spread = (ord(letter) - ord("a")) * (SUBNETS_MAX // NETWORKS_PER_PROCESS_MAX)
        self.subnet = plan_subnet(self.pid + spread, self._taken() if runner is None else ())
        self.bridge_address = str(self.subnet.network_address + 1)
        self.namespaces = {i: f"{self.base}-n{i}" for i in self.ids}
        self.addresses = {i: node_address(self.subnet, i) for i in self.ids}
        self.created = False
        self.partitions = 0
        #: What the last :meth:`teardown` failed to remove, one error per failure.
        self.teardown_errors: list[NetnsError] = []

    # -- naming -------------------------------------------------------------------------

    def address(self, node_id: int) -> str:
        return self.addresses[node_id]

    def namespace(self, node_id: int) -> str:
        return self.namespaces[node_id]

    def wrap(self, node_id: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``node_id``'s namespace (``ip netns exec`` execs it)."""
        return [self.ip, "netns", "exec", self.namespaces[node_id], *argv]

    def _host_veth(self, node_id: int) -> str:
        return f"{self.base}h{node_id}"

    def _inner_veth(self, node_id: int) -> str:
        return f"{self.base}n{node_id}"

    def _taken(self) -> list[ipaddress.IPv4Network]:
        taken: list[ipaddress.IPv4Network] = []
        routes = json.loads(self._run([self.ip, "-j", "-4", "route", "show", "table", "all"]))
        for route in routes:
            dst = str(route.get("dst", "default"))
            if dst != "default":
                taken.append(ipaddress.IPv4Network(dst, strict=False))
        for link in json.loads(self._run([self.ip, "-j", "-4", "addr", "show"])):
            for info in link.get("addr_info", []):
                net = f"{info['local']}/{info.get('prefixlen', 32)}"
                taken.append(ipaddress.IPv4Network(net, strict=False))
        return taken

    # -- building and tearing down ------------------------------------------------------

    def setup(self) -> None:
        """Create the bridge, its ``FORWARD`` rule, the namespaces and veths (on any error,
        remove what was made, then raise)."""
        remove_leftovers(runner=self._run, ip=self.ip, iptables=self.iptables)
        # A dead process with our pid and letter may have left them.
        _raise_first(self._remove_own())
        ip = self.ip
        self.created = True
        self.teardown_errors = []
        try:
            self._run([ip, "link", "add", self.bridge, "type", "bridge"])
            self._run([ip, "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge])
            self._run([self.iptables, "-w", "-I", "FORWARD", *forward_rule(self.bridge)])
            self._run([ip, "link", "set", self.bridge, "up"])
            for i in self.ids:
                ns, host, inner = self.namespaces[i], self._host_veth(i), self._inner_veth(i)
                self._run([ip, "netns", "add", ns])
                self._run(
                    [ip, "link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns]
                )
                self._run([ip, "link", "set", host, "master", self.bridge, "up"])
                self._run([ip, "-n", ns, "link", "set", "lo", "up"])
                self._run([ip, "-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", inner])
                self._run([ip, "-n", ns, "link", "set", inner, "up"])
        except BaseException as exc:
            for error in self.teardown(raise_errors=False):
                exc.add_note(f"and removing the network namespaces failed: {error}")
            raise

    def teardown(self, *, raise_errors: bool = True) -> list[NetnsError]:
        """Remove the ``FORWARD`` rule, the veths, namespaces and bridge (those that
        exist). Every removal is tried; then the first failure is raised, or with
        ``raise_errors=False`` all of them are returned (empty: everything was removed).
        Either way they are kept in :attr:`teardown_errors`. A second call does nothing."""
        errors: list[NetnsError] = []
        try:
            if self.created:
                errors = self._remove_own()
        finally:
            self.created = False
            self._letters_in_use.discard(self._letter)
            self.teardown_errors = errors
        if raise_errors:
            _raise_first(errors)
        return errors

    def _remove_own(self) -> list[NetnsError]:
        _, errors = _remove_forward_rules(self._run, self.iptables, {self.bridge}.__contains__)
        return [
            *errors,
            *_remove(
                self._run,
                self.ip,
                links=[*(self._host_veth(i) for i in self.ids), self.bridge],
                namespaces=list(self.namespaces.values()),
            ),
        ]

    def __enter__(self) -> NetnsNetwork:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        errors = self.teardown(raise_errors=False)
        if exc is None:
            _raise_first(errors)
            return
        for error in errors:
            exc.add_note(f"and removing the network namespaces failed: {error}")

    # -- faults -------------------------------------------------------------------------

    def partition(self, cuts: Mapping[int, Sequence[int]]) -> None:
        """Replace the rules by ``cuts`` (a grudge: each member's cut peers)."""
        self.heal()
        for argv in partition_argv(
            cuts, self.namespaces, self.addresses, ip=self.ip, iptables=self.iptables
        ):
            self._run(argv)
        self.partitions += 1

    def heal(self) -> None:
        """Flush the rules in every namespace."""
        for argv in heal_argv(self.namespaces.values(), ip=self.ip, iptables=self.iptables):
            self._run(argv)

    def rules(self, node_id: int) -> list[str]:
        """The ``DROP`` rules in ``node_id``'s namespace, as ``iptables -S`` prints them."""
        listed = self._run(
            [self.ip, "netns", "exec", self.namespaces[node_id], self.iptables, "-w", "-S"]
        )
        return [line for line in listed.splitlines() if line.endswith("-j DROP")]


def _existing(run: Runner, ip: str) -> tuple[set[str], set[str]]:
    """The names of the links and of the namespaces that exist now."""
    links = {str(link["ifname"]) for link in json.loads(run([ip, "-j", "link", "show"]) or "[]")}
    listed = run([ip, "-j", "netns", "list"]).strip()
    namespaces = {str(ns["name"]) for ns in json.loads(listed or "[]")}
    return links, namespaces


def _raise_first(errors: Sequence[NetnsError]) -> None:
    if errors:
        raise errors[0]


def _remove(
    run: Runner, ip: str, *, links: Sequence[str], namespaces: Sequence[str]
) -> list[NetnsError]:
    """Delete those of ``links`` and ``namespaces`` that exist; the failures."""
    try:
        existing_links, existing_namespaces = _existing(run, ip)
    except NetnsError as exc:
        return [exc]
    errors: list[NetnsError] = []
    commands = [
        *([ip, "link", "del", name] for name in links if name in existing_links),
        *([ip, "netns", "del", name] for name in namespaces if name in existing_namespaces),
    ]
    for argv in commands:
        try:
            run(argv)
        except NetnsError as exc:
            errors.append(exc)
    return errors


def _remove_forward_rules(
    run: Runner, iptables: str, chosen: Callable[[str], bool]
) -> tuple[list[str], list[NetnsError]]:
    """Delete every :func:`forward_rule` of the root namespace whose bridge is ``chosen``
    (as often as it is there); the bridges whose rule was deleted, and the failures."""
    try:
        listed = _forward_bridges(run([iptables, "-w", "-S", "FORWARD"]))
    except NetnsError as exc:
        return [], [exc]
    removed: list[str] = []
    errors: list[NetnsError] = []
    for bridge in filter(chosen, listed):
        try:
            run([iptables, "-w", "-D", "FORWARD", *forward_rule(bridge)])
        except NetnsError as exc:
            errors.append(exc)
        else:
            removed.append(bridge)
    return removed, errors


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(
    *, runner: Runner | None = None, ip: str | None = None, iptables: str | None = None
) -> list[str]:
    """Remove the namespaces, links and ``FORWARD`` rules named by this module whose owner
    process is dead; what was removed, sorted (a rule as ``FORWARD <its spec>``). Every
    removal is tried, then the first failure is raised."""
    run = runner or run_command
    ip = ip or shutil.which("ip") or "ip"
    iptables = iptables or shutil.which("iptables") or "iptables"
    links, namespaces = _existing(run, ip)

    def dead(name: str, pattern: re.Pattern[str]) -> bool:
        match = pattern.match(name)
        return match is not None and not _owner_alive(int(match.group(1)))

    stale_links = sorted(n for n in links if dead(n, _LINK_RE))
    stale_namespaces = sorted(n for n in namespaces if dead(n, _NAMESPACE_RE))
    stale_rules, errors = _remove_forward_rules(run, iptables, lambda b: dead(b, _BRIDGE_RE))
    # The veths inside a namespace go with it; the host ends and bridges are listed here.
    errors += _remove(run, ip, links=stale_links, namespaces=stale_namespaces)
    _raise_first(errors)
    rules = [" ".join(["FORWARD", *forward_rule(b)]) for b in stale_rules]
    return sorted([*stale_links, *stale_namespaces, *rules])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m phalanx.chaos.netns cleanup``: remove the leftovers of dead runs."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["cleanup"]:
        sys.stderr.write("usage: python -m phalanx.chaos.netns cleanup\n")
        return 2
    try:
        check_environment()
        removed = remove_leftovers()
    except NetnsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write("".join(f"{name}\n" for name in removed) or "nothing to remove\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
