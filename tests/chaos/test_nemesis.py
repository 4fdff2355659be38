"""The nemesis: seeded fault schedules, partition shapes, link toxics, and the admin endpoint
that injects faults into a running node."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from node_cluster import cluster, leader_of, until
from phalanx.chaos.nemesis import (
    CLOCK_SKEW_MS_MAX,
    FAULT_KINDS,
    PARTITION_SHAPES,
    PROXY_KINDS,
    STROBE_PERIOD_MS,
    NemesisError,
    grudge,
    plan,
    proxy_toxics,
)
from phalanx.clock import ManualClock
from phalanx.net.faults import (
    CLOCK_OFFSET_MS_MAX,
    DELAYED_MESSAGES_MAX,
    STROBE_PERIOD_MS_MIN,
    ClockStrobe,
    LinkFaults,
    Toxic,
)
from phalanx.node.http import node_http_server

IDS = (1, 2, 3, 4, 5)


# -- schedules ------------------------------------------------------------------------------


def test_a_schedule_is_a_function_of_its_seed() -> None:
    first = plan(7, FAULT_KINDS, time_limit_s=60, ids=IDS)
    assert first == plan(7, FAULT_KINDS, time_limit_s=60, ids=IDS)
    assert first != plan(8, FAULT_KINDS, time_limit_s=60, ids=IDS)


@pytest.mark.parametrize("seed", range(20))
def test_windows_are_ordered_and_close_before_the_time_limit(seed: int) -> None:
    windows = plan(seed, ["partition", "kill", "pause"], time_limit_s=30, ids=IDS)
    assert windows
    for before, after in itertools.pairwise(windows):
        assert before.end_s <= after.start_s
    assert windows[-1].end_s <= 30
    for window in windows:
        assert window.kind in {"partition", "kill", "pause"}
        if window.kind == "partition":
            assert window.shape in PARTITION_SHAPES
        else:
            assert window.node in IDS


def test_clock_windows_give_every_node_a_bounded_offset() -> None:
    windows = plan(2, ["clock"], time_limit_s=30, ids=IDS)
    assert windows
    for window in windows:
        assert sorted(window.offsets) == list(IDS)
        assert all(abs(o) <= CLOCK_SKEW_MS_MAX for o in window.offsets.values())


def test_no_faults_no_windows_and_unknown_faults_refused() -> None:
    assert plan(1, [], time_limit_s=30, ids=IDS) == []
    with pytest.raises(NemesisError, match="unknown fault"):
        plan(1, ["flood"], time_limit_s=30, ids=IDS)
    with pytest.raises(NemesisError, match="shapes"):
        plan(1, ["partition"], time_limit_s=30, ids=IDS, shapes=["moon"])


def _talk(cuts: dict[int, list[int]], a: int, b: int) -> bool:
    return b not in cuts[a] and a not in cuts[b]


def test_halves_cut_a_minority_from_a_majority() -> None:
    for seed in range(10):
        window = plan(seed, ["partition"], time_limit_s=20, ids=IDS, shapes=["halves"])[0]
        small, large = window.groups
        assert (len(small), len(large)) == (2, 3)
        cuts = grudge(window.groups, IDS)
        for a, b in itertools.product(small, large):
            assert not _talk(cuts, a, b)
        for a, b in itertools.combinations(large, 2):
            assert _talk(cuts, a, b)


def test_the_majorities_ring_gives_every_node_a_different_majority() -> None:
    (window, *_) = plan(3, ["partition"], time_limit_s=20, ids=IDS, shapes=["ring"])
    cuts = grudge(window.groups, IDS, views=True)
    seen = [frozenset([a, *(b for b in IDS if b != a and _talk(cuts, a, b))]) for a in IDS]
    assert all(len(view) == 3 for view in seen)  # a majority of 5
    assert len(set(seen)) == len(IDS)  # no two alike


def test_a_bridge_node_reaches_both_sides() -> None:
    (window, *_) = plan(5, ["partition"], time_limit_s=20, ids=IDS, shapes=["bridge"])
    left, right = window.groups
    (bridge,) = set(left) & set(right)
    cuts = grudge(window.groups, IDS)
    assert cuts[bridge] == []
    for a, b in itertools.product(set(left) - {bridge}, set(right) - {bridge}):
        assert not _talk(cuts, a, b)


# -- link toxics ----------------------------------------------------------------------------


async def test_loss_drops_and_latency_delays_outgoing_messages() -> None:
    faults = LinkFaults(seed=1)
    sent: list[str] = []
    faults.set_toxics({2: Toxic(loss=1.0), 3: Toxic(latency_ms=30.0, jitter_ms=10.0)})
    faults.send(2, sent.append, "lost")
    faults.send(3, sent.append, "late")
    faults.send(4, sent.append, "now")
    assert sent == ["now"]
    assert faults.state().dropped_out == 1
    assert faults.state().delayed == 1
    await until_true(lambda: "late" in sent)
    assert faults.state().delayed == 0
    faults.heal()
    faults.send(2, sent.append, "healed")
    assert sent[-1] == "healed"


async def test_delayed_messages_are_bounded() -> None:
    faults = LinkFaults()
    faults.set_toxics({2: Toxic(latency_ms=60_000.0)})
    for n in range(DELAYED_MESSAGES_MAX + 5):
        faults.send(2, lambda _m: None, n)
    state = faults.state()
    assert state.delayed == DELAYED_MESSAGES_MAX
    assert state.dropped_out == 5


def test_a_clock_offset_shifts_now_until_healed() -> None:
    faults = LinkFaults()
    before_ms = int(time.time() * 1000)
    faults.set_clock_offset(60_000)
    assert faults.now_ms() - before_ms >= 60_000
    assert faults.state().clock_offset_ms == 60_000
    faults.heal()
    assert faults.now_ms() - before_ms < 60_000
    with pytest.raises(ValueError, match="clock offset"):
        faults.set_clock_offset(CLOCK_OFFSET_MS_MAX + 1)


def test_a_clock_strobe_jumps_back_and_forth_until_it_ends() -> None:
    clock = ManualClock(wall_start_s=1_000.0)
    faults = LinkFaults(clock=clock)
    faults.set_clock_offset(-100)
    faults.set_clock_strobe(ClockStrobe(delta_ms=5_000, period_ms=50, duration_ms=200))
    seen = []
    for _ in range(6):  # 0, 40, 80, 120, 160, 200 ms into the strobe
        seen.append(faults.now_ms() - round(clock.wall_s() * 1000))
        clock.advance(0.04)
    # The jump first, back at 50 ms, again at 100 ms, back at 150 ms, over at 200 ms.
    assert seen == [4_900, 4_900, -100, 4_900, -100, -100]
    assert faults.state().clock_strobe is None
    faults.set_clock_strobe(ClockStrobe(delta_ms=-3_000, period_ms=10, duration_ms=1_000))
    assert faults.state().clock_strobe == ClockStrobe(
        delta_ms=-3_000, period_ms=10, duration_ms=1_000
    )
    faults.heal()
    assert faults.now_ms() == round(clock.wall_s() * 1000)
    assert faults.state().clock_strobe is None
    with pytest.raises(ValueError, match="period_ms"):
        ClockStrobe(delta_ms=1, period_ms=STROBE_PERIOD_MS_MIN - 1, duration_ms=10)
    with pytest.raises(ValueError, match="delta_ms"):
        ClockStrobe(delta_ms=CLOCK_OFFSET_MS_MAX + 1, period_ms=10, duration_ms=10)
    with pytest.raises(ValueError, match="duration_ms"):
        ClockStrobe(delta_ms=1, period_ms=10, duration_ms=-1)


def test_half_the_clock_windows_strobe() -> None:
    windows = plan(3, ["clock"], time_limit_s=600, ids=IDS)
    strobes = [w for w in windows if w.strobe_period_ms]
    assert 0 < len(strobes) < len(windows)
    low, high = STROBE_PERIOD_MS
    assert all(low <= w.strobe_period_ms <= high for w in strobes)
    assert {w.describe() for w in windows} == {"clock", "clock strobe"}


def test_the_command_line_offers_every_fault_kind() -> None:
    from phalanx.cli.chaos import _NEMESES

    assert set(_NEMESES) == set(FAULT_KINDS)


def test_proxy_windows_carry_toxiproxy_toxics_drawn_in_advance() -> None:
    windows = plan(11, PROXY_KINDS, time_limit_s=400, ids=IDS)
    assert {w.kind for w in windows} == set(PROXY_KINDS)
    for window in windows:
        toxics = proxy_toxics(window)
        types = [t["type"] for t in toxics]
        attributes = toxics[0]["attributes"]
        if window.kind == "bandwidth":
            assert (window.node, types) == (0, ["bandwidth"])
            assert 4 <= attributes["rate"] <= 64
        elif window.kind == "reset":
            assert window.node in IDS
            assert types == ["reset_peer"]
            assert 0 <= attributes["timeout"] <= 1_000
        elif window.kind == "slow-close":
            assert types == ["limit_data", "slow_close", "slow_close"]
            assert {t["stream"] for t in toxics[1:]} == {"upstream", "downstream"}
            assert 1024 <= attributes["bytes"] <= 64 * 1024
        else:
            assert window.node in IDS
            assert types == ["timeout", "timeout"]
            assert attributes["timeout"] == 0 or 500 <= attributes["timeout"] <= 3_000
        assert all(isinstance(v, int) for t in toxics for v in t["attributes"].values())
    assert {w.describe() for w in windows if w.kind == "reset"} <= {f"reset {i}" for i in IDS}


def test_toxics_are_validated() -> None:
    with pytest.raises(ValueError, match="loss"):
        Toxic(loss=1.5)
    with pytest.raises(ValueError, match="latency_ms"):
        Toxic(latency_ms=-1.0)


async def until_true(predicate: object, timeout_s: float = 10.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling the event loop's timers
            await asyncio.sleep(0.01)


# -- the admin endpoint -----------------------------------------------------------------------


async def _http(
    address: tuple[str, int], method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, object]]:
    host, port = address
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    status = int(status_line.split()[1])
    try:
        answer = json.loads(payload) if payload else {}
    except json.JSONDecodeError:
        answer = {}
    return status, answer if isinstance(answer, dict) else {}


async def test_admin_endpoint_isolates_and_heals_a_running_node(tmp_path: Path) -> None:
    async with cluster(tmp_path, (1, 2, 3), transfer_on_close=False) as nodes:
        old = await leader_of(nodes)
        http = node_http_server(old, CollectorRegistry(), ("127.0.0.1", 0), faults=old.faults)
        async with http:
            others = [i for i in nodes if i != old.id]
            status, state = await _http(
                http.address,
                "POST",
                "/admin/faults",
                json.dumps({"isolate": others, "toxics": {"2": {"loss": 0.5}}}).encode(),
            )
            assert status == 200
            assert state["cut"] == others
            assert state["toxics"] == {"2": {"loss": 0.5, "latency_ms": 0.0, "jitter_ms": 0.0}}
            assert old.faults.cut == frozenset(others)
            # The rest of the cluster no longer hears the cut-off leader: it elects another.
            rest = {i: n for i, n in nodes.items() if i != old.id}
            new = await leader_of(rest)
            assert new.id != old.id

            status, state = await _http(http.address, "GET", "/admin/faults")
            assert status == 200
            assert state["cut"] == others
            assert isinstance(state["dropped_in"], int)
            assert isinstance(state["dropped_out"], int)
            assert state["dropped_in"] + state["dropped_out"] > 0

            status, state = await _http(http.address, "POST", "/admin/faults", b'{"heal":true}')
            assert (status, state["cut"], state["toxics"]) == (200, [], {})
            await until(lambda: old.leader_id == new.id, "the old leader to follow the new one")

            status, state = await _http(
                http.address, "POST", "/admin/faults", b'{"clock_offset_ms": -2500}'
            )
            assert (status, state["clock_offset_ms"]) == (200, -2500)
            assert old.faults.now_ms() < int(time.time() * 1000) - 2000
            strobe = {"delta_ms": 4000, "period_ms": 20, "duration_ms": 60_000}
            body = json.dumps({"clock_strobe": strobe}).encode()
            status, state = await _http(http.address, "POST", "/admin/faults", body)
            assert (status, state["clock_strobe"]) == (200, strobe)
            bad = json.dumps({"clock_strobe": {**strobe, "period_ms": 0}}).encode()
            status, state = await _http(http.address, "POST", "/admin/faults", bad)
            assert status == 400
            assert "period_ms" in state["error"]

            status, state = await _http(http.address, "POST", "/admin/faults", b'{"isolate":"x"}')
            assert status == 400
            assert "error" in state
            huge = json.dumps({"clock_offset_ms": CLOCK_OFFSET_MS_MAX + 1}).encode()
            status, state = await _http(http.address, "POST", "/admin/faults", huge)
            assert status == 400
            assert old.faults.state().clock_offset_ms == -2500
            status, _ = await _http(http.address, "PUT", "/admin/faults")
            assert status == 405


async def test_admin_endpoint_is_absent_unless_asked_for(tmp_path: Path) -> None:
    async with cluster(tmp_path, (1,)) as nodes:
        node = nodes[1]
        async with node_http_server(node, CollectorRegistry(), ("127.0.0.1", 0)) as http:
            status, _ = await _http(http.address, "POST", "/admin/faults", b'{"isolate":[2]}')
            assert status == 404
            assert node.faults.cut == frozenset()
