"""Parsing ``--cluster`` member lists."""

from __future__ import annotations

import pytest

from phalanx.node.cluster_spec import Member, parse_address, parse_cluster


def test_parse_cluster() -> None:
    members = parse_cluster("1=127.0.0.1:7001/127.0.0.1:8001, 2=h2:7002/h2:8002")
    assert members == {
        1: Member(("127.0.0.1", 7001), ("127.0.0.1", 8001)),
        2: Member(("h2", 7002), ("h2", 8002)),
    }
    assert parse_address("[::1]:80") == ("::1", 80)


@pytest.mark.parametrize(
    "text",
    ["", "1=h:1", "x=h:1/h:2", "0=h:1/h:2", "1=h:1/h:2,1=h:3/h:4", "1=h/h:2", "1=h:1/h:99999"],
)
def test_parse_cluster_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cluster(text)
