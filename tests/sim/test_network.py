"""Links delay, lose and duplicate; partitions have the shapes their names promise."""

import itertools
import random

import pytest

from phalanx.sim.network import LinkProfile, Network, majorities_ring_links

NODES = [1, 2, 3, 4, 5]


def reachable(net: Network, node: int) -> set[int]:
    return {node} | {o for o in NODES if o != node and net.connected(node, o)}


def test_delays_stay_within_the_profile() -> None:
    profile = LinkProfile(delay_us_min=100, delay_us_max=200, tail_probability=0.0)
    net = Network(random.Random(1), profile)
    delays = [d for _ in range(1000) for d in net.transmit(1, 2)]
    assert len(delays) == 1000
    assert min(delays) >= 100
    assert max(delays) <= 200


def test_tail_delays_reorder_messages() -> None:
    profile = LinkProfile(tail_probability=0.5, tail_delay_us_max=1_000_000)
    net = Network(random.Random(2), profile)
    delays = [net.transmit(1, 2)[0] for _ in range(200)]
    assert max(delays) > profile.delay_us_max
    assert delays != sorted(delays)


def test_loss_and_duplication_are_counted() -> None:
    net = Network(random.Random(3), LinkProfile(loss_probability=1.0))
    assert net.transmit(1, 2) == ()
    assert net.stats.lost == 1
    net = Network(random.Random(3), LinkProfile(duplicate_probability=1.0))
    assert len(net.transmit(1, 2)) == 2
    assert net.stats.duplicated == 1


def test_per_link_profiles_override_the_default_until_clean() -> None:
    net = Network(random.Random(4))
    net.set_link(1, 2, LinkProfile(loss_probability=1.0))
    assert net.transmit(1, 2) == ()
    assert len(net.transmit(2, 1)) == 1
    net.clean()
    assert len(net.transmit(1, 2)) == 1


def test_isolate_cuts_one_node_both_ways_and_heal_restores() -> None:
    net = Network(random.Random(5))
    net.isolate(3, NODES)
    assert reachable(net, 3) == {3}
    assert reachable(net, 1) == {1, 2, 4, 5}
    assert net.transmit(3, 1) == ()
    assert net.stats.blocked == 1
    assert not net.arrives(1, 3)
    net.heal()
    assert not net.partitioned
    assert reachable(net, 3) == set(NODES)


def test_halves_split_into_two_sides() -> None:
    net = Network(random.Random(6))
    net.split([[1, 2], [3, 4, 5]])
    assert reachable(net, 1) == {1, 2}
    assert reachable(net, 4) == {3, 4, 5}


def test_bridge_node_sees_both_sides_which_do_not_see_each_other() -> None:
    net = Network(random.Random(7))
    net.bridge([1, 2], 3, [4, 5])
    assert reachable(net, 3) == set(NODES)
    assert reachable(net, 1) == {1, 2, 3}
    assert reachable(net, 5) == {3, 4, 5}


@pytest.mark.parametrize("n", [3, 5, 7, 9])
def test_majorities_ring_every_node_sees_a_distinct_majority(n: int) -> None:
    ring = list(range(1, n + 1))
    blocked = majorities_ring_links(ring)
    views = []
    for a in ring:
        view = frozenset({a} | {b for b in ring if b != a and (a, b) not in blocked})
        assert len(view) > n // 2, (a, view)
        views.append(view)
    if n > 3:
        assert len(set(views)) == n  # no two nodes see the same majority
    for a, b in itertools.permutations(ring, 2):
        assert ((a, b) in blocked) == ((b, a) in blocked)  # symmetric


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="delay_us_min"):
        LinkProfile(delay_us_min=10, delay_us_max=5)
    with pytest.raises(ValueError, match="loss_probability"):
        LinkProfile(loss_probability=1.5)
