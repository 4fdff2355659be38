"""Membership changes: learners, single-step changes (thesis 4.1), joint consensus (4.3)."""

from __future__ import annotations

import random

import pytest
from phalanx_tests_raft_harness import Network

from phalanx.errors import InvariantViolation
from phalanx.raft.config import Config
from phalanx.raft.raft import Raft
from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import ConfChange, ConfChangeType, ConfState, EntryType, Role

ADD = ConfChangeType.ADD_VOTER
LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE_NODE


def conf_entries(net: Network, node: int) -> list[EntryType]:
    return [e.type for e in net.applied[node] if e.index > 1]


def test_learner_receives_the_log_but_is_never_counted() -> None:
    net = Network(extra=(4,))
    net.elect(1)
    net.change(1, ConfChange(changes=((LEARNER, 4),)))
    assert net[1].status().conf_state == ConfState(voters=(1, 2, 3), learners=(4,))
    net.propose(1, b"x")
    assert net.data(4) == [b"x"]
    assert net[4].status().role == Role.LEARNER
    assert net[4].status().conf_state.learners == (4,)
    # The leader and the learner alone are no quorum.
    net.isolate(2)
    net.isolate(3)
    net.cut -= {(1, 4), (4, 1)}
    before = net[1].status().commit
    net.propose(1, b"y")
    assert net.log(4)[-1][0] == before + 1
    assert net[1].status().commit == before
    # A learner never campaigns, however long it hears nothing.
    net.isolate(4)
    for _ in range(100):
        net.tick(4)
    assert net[4].status().role == Role.LEARNER
    assert net[4].status().term == 1


def test_learner_promoted_to_voter_counts() -> None:
    net = Network(extra=(4,))
    net.elect(1)
    net.change(1, ConfChange(changes=((LEARNER, 4),)))
    net.change(1, ConfChange(changes=((ADD, 4),)))
    assert net[1].status().conf_state == ConfState(voters=(1, 2, 3, 4))
    net.isolate(3)
    net.propose(1, b"x")  # 1, 2, 4 are a quorum of four
    assert net.data(4) == [b"x"]
    net.isolate(2)
    net.propose(1, b"y")  # 1 and 4 are not
    assert net.data(4) == [b"x"]


def test_only_one_change_in_flight_the_second_becomes_an_empty_entry() -> None:
    net = Network(extra=(4, 5))
    net.elect(1)
    net[1].propose_conf_change(ConfChange(changes=((LEARNER, 4),)))
    net[1].propose_conf_change(ConfChange(changes=((LEARNER, 5),)))
    net.settle()
    assert conf_entries(net, 1) == [EntryType.CONF_CHANGE, EntryType.NORMAL]
    assert net[1].status().conf_state.learners == (4,)
    # Once the first is applied, another change is accepted.
    net.change(1, ConfChange(changes=((LEARNER, 5),)))
    assert net[1].status().conf_state.learners == (4, 5)


@pytest.mark.parametrize(
    "change",
    [
        ConfChange(changes=((ADD, 4), (ADD, 5))),  # two voters without joint consensus
        ConfChange(),  # leaving a joint configuration that is not joint
        ConfChange(changes=((REMOVE, 1), (REMOVE, 2), (REMOVE, 3)), joint=True),  # no voters
    ],
)
def test_invalid_change_commits_as_an_empty_entry(change: ConfChange) -> None:
    net = Network(extra=(4, 5))
    net.elect(1)
    net.change(1, change)
    assert conf_entries(net, 1) == [EntryType.NORMAL]
    assert net[1].status().conf_state == ConfState(voters=(1, 2, 3))


def test_joint_consensus_counts_both_majorities() -> None:
    net = Network(extra=(4,))
    net.elect(1)
    replace_3_by_4 = ConfChange(changes=((ADD, 4), (REMOVE, 3)), joint=True, auto_leave=False)
    net.change(1, replace_3_by_4)
    assert net[1].status().conf_state == ConfState(
        voters=(1, 2, 4), voters_outgoing=(1, 2, 3), auto_leave=False
    )
    # 1 and 4 are a majority of the incoming {1, 2, 4} but not of the outgoing {1, 2, 3}.
    net.partition({1, 4}, {2, 3})
    commit = net[1].status().commit
    net.propose(1, b"x")
    assert net[1].status().commit == commit
    net.heal()
    net.settle()
    net.tick_all(1)
    assert net[1].status().commit == commit + 1
    # Leaving the joint configuration: node 3 is out.
    net.change(1, ConfChange())
    assert net[1].status().conf_state == ConfState(voters=(1, 2, 4))
    assert net[4].status().conf_state == ConfState(voters=(1, 2, 4))
    net.partition({1, 4}, {2, 3})
    net.propose(1, b"y")
    assert net.data(4)[-1] == b"y"


def test_joint_with_auto_leave_leaves_by_itself() -> None:
    net = Network(extra=(4, 5))
    net.elect(1)
    net.change(1, ConfChange(changes=((ADD, 4), (ADD, 5)), joint=True))
    types = conf_entries(net, 1)
    assert types == [EntryType.CONF_CHANGE, EntryType.CONF_CHANGE]  # enter, then leave
    assert net[1].status().conf_state == ConfState(voters=(1, 2, 3, 4, 5))
    assert net[5].status().conf_state == ConfState(voters=(1, 2, 3, 4, 5))


def test_voter_demoted_while_joint_becomes_a_learner_on_leaving() -> None:
    net = Network()
    net.elect(1)
    net.change(1, ConfChange(changes=((LEARNER, 3),), joint=True, auto_leave=False))
    assert net[1].status().conf_state == ConfState(
        voters=(1, 2), voters_outgoing=(1, 2, 3), learners_next=(3,)
    )
    net.change(1, ConfChange())
    assert net[1].status().conf_state == ConfState(voters=(1, 2), learners=(3,))
    assert net[3].status().role == Role.LEARNER


def test_removed_leader_steps_down_once_the_change_applies() -> None:
    net = Network()
    net.elect(1)
    net.change(1, ConfChange(changes=((REMOVE, 1),)))
    assert net[1].status().role == Role.FOLLOWER
    assert net[2].status().conf_state == ConfState(voters=(2, 3))
    for _ in range(30):
        net.tick_all(1)
        if Role.LEADER in (net.role(2), net.role(3)):
            break
    assert Role.LEADER in (net.role(2), net.role(3))
    # The removed node never campaigns.
    for _ in range(50):
        net.tick(1)
    assert net.role(1) == Role.FOLLOWER


def test_leader_leaving_through_joint_stays_until_the_leave_applies() -> None:
    net = Network(extra=(4,))
    net.elect(1)
    net.change(1, ConfChange(changes=((ADD, 4), (REMOVE, 1)), joint=True, auto_leave=False))
    assert net.role(1) == Role.LEADER  # still an outgoing voter
    net.change(1, ConfChange())
    assert net.role(1) == Role.FOLLOWER
    assert net[2].status().conf_state == ConfState(voters=(2, 3, 4))
    for _ in range(30):
        net.tick_all(1)
    assert sorted(net.role(n) for n in (2, 3, 4)).count(Role.LEADER) == 1
    assert net[4].status().conf_state == ConfState(voters=(2, 3, 4))


def test_a_committed_change_that_does_not_apply_is_an_invariant_violation() -> None:
    net = Network()
    with pytest.raises(InvariantViolation, match="does not apply"):
        net[1].apply_conf_change(ConfChange())


# -- a membership change learned in the middle of a campaign ----------------------------------

OTHERS = (1, 4, 5, 6, 7)


def _change_known_only_to_3(kind: ConfChangeType, **config: object) -> Network:
    """Seven voters led by 2 commit ``kind`` of node 1; only 3 learns that it committed.

    Every node holds the change (index 3) but only 2 and 3 know it committed; 3 also holds
    one more entry, so it refuses node 1's vote, and its refusal carries commit index 3.
    The leader is then cut off and the others' vote lease runs out.
    """
    net = Network(voters=(1, 2, 3, 4, 5, 6, 7), seed=3, config=dict(config))
    net.elect(2)
    net.propose(2, b"warmup")
    net[2].propose_conf_change(ConfChange(changes=((kind, 1),)))
    net.process(2)
    for _ in range(len(net.pending())):  # the appends carrying the change, answers queued
        net.deliver_one()
    net.cut |= {(2, o) for o in OTHERS}
    net.settle()
    net.propose(2, b"only-3")
    net.isolate(2)
    assert {n: net[n].status().commit for n in net.nodes} == {
        1: 2,
        2: 3,
        3: 3,
        4: 2,
        5: 2,
        6: 2,
        7: 2,
    }
    assert net.log(1)[-1] == (3, 1)
    assert net.log(3)[-1] == (4, 1)
    for node in (3, 4, 5, 6, 7):
        net.tick(node, 10)
    net.trace.clear()
    return net


DEMOTED_OR_REMOVED = pytest.mark.parametrize(
    ("kind", "role"), [(LEARNER, Role.LEARNER), (REMOVE, Role.FOLLOWER)], ids=["demoted", "removed"]
)


@DEMOTED_OR_REMOVED
def test_pre_candidate_that_applies_its_demotion_gives_up(kind: ConfChangeType, role: Role) -> None:
    net = _change_known_only_to_3(kind)
    net.campaign(1)
    # 3's refusal carries commit 3: node 1 commits and applies the change, and gives up
    # the pre-vote it would otherwise have won with 4, 5, 6 and 7 under the old membership.
    assert net.trace == [
        ("PRE_VOTE", 1, 3, 2, 3, 1),
        ("PRE_VOTE", 1, 4, 2, 3, 1),
        ("PRE_VOTE", 1, 5, 2, 3, 1),
        ("PRE_VOTE", 1, 6, 2, 3, 1),
        ("PRE_VOTE", 1, 7, 2, 3, 1),
        ("PRE_VOTE_RESP", 3, 1, 1, "reject"),
        ("PRE_VOTE_RESP", 4, 1, 2, "grant"),
        ("PRE_VOTE_RESP", 5, 1, 2, "grant"),
        ("PRE_VOTE_RESP", 6, 1, 2, "grant"),
        ("PRE_VOTE_RESP", 7, 1, 2, "grant"),
    ]
    st = net[1].status()
    assert (st.role, st.term, st.leader, st.applied) == (role, 1, 0, 3)
    assert 1 not in st.conf_state.voters
    # It is no voter any more, so it never campaigns again.
    net.trace.clear()
    net.tick(1, 100)
    net.settle()
    assert net.trace == []
    assert net.role(1) == role


@DEMOTED_OR_REMOVED
def test_candidate_that_applies_its_demotion_gives_up(kind: ConfChangeType, role: Role) -> None:
    net = _change_known_only_to_3(kind, pre_vote=False)
    net.campaign(1)
    assert net.trace == [
        ("VOTE", 1, 3, 2, 3, 1),
        ("VOTE", 1, 4, 2, 3, 1),
        ("VOTE", 1, 5, 2, 3, 1),
        ("VOTE", 1, 6, 2, 3, 1),
        ("VOTE", 1, 7, 2, 3, 1),
        ("VOTE_RESP", 3, 1, 2, "reject"),
        ("VOTE_RESP", 4, 1, 2, "grant"),
        ("VOTE_RESP", 5, 1, 2, "grant"),
        ("VOTE_RESP", 6, 1, 2, "grant"),
        ("VOTE_RESP", 7, 1, 2, "grant"),
    ]
    st = net[1].status()
    # Same term, still its own vote, no leader: a follower (or learner) that lost nothing.
    assert (st.role, st.term, st.vote, st.leader, st.applied) == (role, 2, 1, 0, 3)
    net.trace.clear()
    net.tick(1, 100)
    net.settle()
    assert net.trace == []


@DEMOTED_OR_REMOVED
def test_win_counted_before_the_learned_change_is_applied_is_given_up(
    kind: ConfChangeType, role: Role
) -> None:
    """The votes arrive before the driver handles the Ready that applies the change."""
    net = _change_known_only_to_3(kind, pre_vote=False)
    while net.role(1) == Role.FOLLOWER:
        net.tick(1)
    for _ in range(len(net.pending())):  # the vote requests; the answers are queued
        net.deliver_one()
    answers, net.queue = net.queue, []
    assert [(m.src, m.reject) for m in answers] == [
        (3, True),
        (4, False),
        (5, False),
        (6, False),
        (7, False),
    ]
    roles = []
    for m in answers:
        net[1].step(m)
        roles.append(net[1].status().role)
    # 3's refusal committed the change (not applied yet). 6's grant completes a majority of
    # the old membership (1, 4, 5, 6): node 1 gives up instead of leading under it.
    assert roles == [Role.CANDIDATE] * 3 + [Role.FOLLOWER] * 2
    net.process(1)
    st = net[1].status()
    assert (st.role, st.term, st.applied) == (role, 2, 3)
    assert 1 not in st.conf_state.voters


def test_become_leader_refuses_a_node_that_is_not_a_voter() -> None:
    raft = Raft(Config(id=1), MemoryStorage(conf_state=ConfState(voters=(2, 3))), random.Random(0))
    raft.become_candidate()
    with pytest.raises(InvariantViolation, match="not a voter"):
        raft.become_leader()


# -- restarting with Config.applied past membership changes ------------------------------------


def _grown_to_five() -> Network:
    """Voters 1, 2, 3 add 4 (index 2) and 5 (index 3); ``x`` is at index 4, all committed."""
    net = Network(voters=(1, 2, 3), extra=(4, 5), seed=1)
    net.elect(1)
    net.change(1, ConfChange(((ADD, 4),)))
    net.change(1, ConfChange(((ADD, 5),)))
    net.propose(1, b"x")
    net.tick_all(2)
    st = net[1].status()
    assert (st.conf_state.voters, st.commit, st.applied) == ((1, 2, 3, 4, 5), 4, 4)
    return net


def _needs_a_majority_of_five(net: Network) -> None:
    """Node 1 (restarted) with only 2's vote must not win; 3, 4, 5 elect a leader."""
    net.isolate(1)
    net.cut -= {(1, 2), (2, 1)}
    net.tick(2, 10)
    net.campaign(1)
    assert net.role(1) != Role.LEADER
    net.partition((1, 2), (3, 4, 5))
    for node in (3, 4, 5):
        net.tick(node, 10)
    net.campaign(3)
    assert net.role(3) == Role.LEADER
    leaders = [(net[n].status().term, n) for n in net.nodes if net.role(n) == Role.LEADER]
    assert len({term for term, _ in leaders}) == len(leaders), leaders


def test_restart_with_applied_past_conf_changes_keeps_the_membership() -> None:
    net = _grown_to_five()
    net.applied[1] = []
    raw = net.restart(1, applied=4)
    assert raw.status().conf_state == ConfState(voters=(1, 2, 3, 4, 5))
    assert raw.status().applied == 4
    net.settle()
    assert net.applied[1] == []  # nothing up to ``applied`` is handed out again
    _needs_a_majority_of_five(net)


def test_restart_with_applied_past_a_snapshot_replays_only_later_changes() -> None:
    net = _grown_to_five()
    storage = net.storages[1]
    # The snapshot at 2 holds the first change; the second (at 3) is only in the log after it.
    storage.create_snapshot(2, ConfState(voters=(1, 2, 3, 4)), b"")
    storage.compact(2)
    net.applied[1] = []
    raw = net.restart(1, applied=3)
    assert raw.status().conf_state == ConfState(voters=(1, 2, 3, 4, 5))
    net.settle()
    assert [e.index for e in net.applied[1]] == [4]  # only what follows ``applied``
    _needs_a_majority_of_five(net)
