"""The Ready contract: one out at a time, messages only after persisting, no self-messages."""

from __future__ import annotations

import random

import pytest
from phalanx_tests_raft_harness import Network, T

from phalanx.errors import InvariantViolation
from phalanx.raft.config import Config
from phalanx.raft.node import RawNode
from phalanx.raft.storage import MemoryStorage
from phalanx.raft.types import ConfState, HardState, Message, Ready, Role


def fresh(node: int = 1) -> tuple[RawNode, MemoryStorage]:
    storage = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    return RawNode(Config(id=node, pre_vote=False), storage, random.Random(node)), storage


def test_ready_twice_without_advance_is_refused() -> None:
    raw, _ = fresh()
    raw.step(Message(type=T.VOTE, src=2, dst=1, term=2))
    rd = raw.ready()
    assert not raw.has_ready()  # while one is out
    with pytest.raises(InvariantViolation, match="before advance"):
        raw.ready()
    raw.advance(rd)


def test_advance_takes_exactly_the_last_ready() -> None:
    raw, _ = fresh()
    raw.step(Message(type=T.VOTE, src=2, dst=1, term=2))
    raw.ready()
    with pytest.raises(InvariantViolation, match="last ready"):
        raw.advance(Ready())


def test_vote_and_its_answer_come_in_one_ready_persist_first() -> None:
    raw, _ = fresh()
    raw.step(Message(type=T.VOTE, src=2, dst=1, term=2))
    rd = raw.ready()
    # The driver must write the vote before sending the answer that promises it.
    assert rd.hard_state == HardState(term=2, vote=2, commit=0)
    assert [(m.type, m.dst) for m in rd.messages] == [(T.VOTE_RESP, 2)]


def test_steps_between_ready_and_advance_go_in_the_next_ready() -> None:
    net = Network()
    net.elect(1)
    raw = net[1]
    raw.propose(b"a")
    rd = raw.ready()
    raw.propose(b"b")  # while the first Ready is being persisted
    net.storages[1].append(rd.entries)
    net.queue.extend(rd.messages)
    raw.advance(rd)
    rd2 = raw.ready()
    assert [e.data for e in rd.entries] == [b"a"]
    assert [e.data for e in rd2.entries] == [b"b"]
    net.storages[1].append(rd2.entries)
    net.queue.extend(rd2.messages)
    raw.advance(rd2)
    net.settle()
    assert net.data(2) == [b"a", b"b"]


def test_leader_never_emits_messages_to_itself() -> None:
    net = Network(voters=(1,))
    net.elect(1)
    net.propose(1, b"x")
    assert net.queue == []
    assert net.data(1) == [b"x"]


def test_leader_counts_its_own_entries_only_after_persisting_them() -> None:
    net = Network(voters=(1,))
    net.elect(1)
    raw = net[1]
    raw.propose(b"x")
    rd = raw.ready()
    assert rd.committed_entries == ()
    assert raw.status().commit == 1  # the new entry 2 is not committed before its persist
    net.storages[1].append(rd.entries)
    raw.advance(rd)
    assert raw.status().commit == 2


def test_soft_state_reports_role_and_leader_changes_once() -> None:
    net = Network()
    raw = net[1]
    seen = []
    for _ in range(40):
        raw.tick()
        while raw.has_ready():
            rd = raw.ready()
            if rd.soft_state is not None:
                seen.append(rd.soft_state.role)
            net.storages[1].append(rd.entries)
            if rd.hard_state is not None:
                net.storages[1].set_hard_state(rd.hard_state)
            raw.advance(rd)
    assert seen[:1] == [Role.PRE_CANDIDATE]  # pre-vote is on by default
