"""Every Config limit is validated with a ValueError naming the field."""

from __future__ import annotations

import pytest

from phalanx.raft.config import ELECTION_TICKS_MAX, MAX_INFLIGHT_MSGS_MAX, Config


def test_defaults_are_valid() -> None:
    config = Config(id=1)
    assert config.election_ticks == 10
    assert config.heartbeat_ticks == 1
    assert config.pre_vote
    assert config.check_quorum
    assert config.read_only == "safe"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 0),
        ("id", -1),
        ("id", True),
        ("heartbeat_ticks", 0),
        ("election_ticks", 0),
        ("election_ticks", ELECTION_TICKS_MAX + 1),
        ("max_inflight_msgs", 0),
        ("max_inflight_msgs", MAX_INFLIGHT_MSGS_MAX + 1),
        ("max_size_per_msg_bytes", 0),
        ("max_uncommitted_entries_bytes", 0),
        ("max_entries_per_msg", 0),
        ("read_only", "fast"),
        ("applied", -1),
        ("pre_vote", 1),
        ("check_quorum", "yes"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"id": 1, field: value}
    with pytest.raises(ValueError, match=field):
        Config(**kwargs)  # type: ignore[arg-type]


def test_election_must_exceed_heartbeat() -> None:
    with pytest.raises(ValueError, match="election_ticks"):
        Config(id=1, election_ticks=3, heartbeat_ticks=3)
    Config(id=1, election_ticks=4, heartbeat_ticks=3)


def test_lease_reads_need_check_quorum() -> None:
    with pytest.raises(ValueError, match="read_only"):
        Config(id=1, read_only="lease", check_quorum=False)
    assert Config(id=1, read_only="lease").read_only == "lease"


def test_config_is_frozen() -> None:
    config = Config(id=1)
    with pytest.raises(AttributeError):
        config.id = 2  # type: ignore[misc]
