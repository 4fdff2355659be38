"""Membership changes: learners, single-step changes (thesis 4.1), joint consensus (4.3)."""

from __future__ import annotations

import pytest
from phalanx_tests_raft_harness import Network

from phalanx.errors import InvariantViolation
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
