"""Every named limit is reached by a test, and bad input is refused with a typed error."""

from __future__ import annotations

import msgspec
import pytest

from phalanx.errors import BadRequest, TooLarge
from phalanx.kv import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    KVStore,
    LeaseExpire,
    LeaseGrant,
    Limits,
    Proposal,
    Put,
    Range,
    Txn,
    decode_proposal,
    encode_proposal,
)
from phalanx.kv.responses import Error

LIMITS = Limits(
    key_bytes_max=8,
    value_bytes_max=16,
    txn_ops_max=2,
    range_limit_max=3,
    leases_max=1,
    lease_expire_ids_max=2,
    proposal_bytes_max=256,
)


@pytest.mark.parametrize(
    ("proposal", "error"),
    [
        (Proposal(Put(b"k" * 9, b"v")), TooLarge),
        (Proposal(Put(b"", b"v")), BadRequest),
        (Proposal(Put(b"k", b"v" * 17)), TooLarge),
        (Proposal(DeleteRange(b"b", b"a")), BadRequest),
        (Proposal(Txn(success=(Put(b"a", b"1"), Put(b"b", b"1"), Put(b"c", b"1")))), TooLarge),
        (Proposal(Txn(failure=(Range(b"a", limit=4),))), TooLarge),
        (
            Proposal(Txn(compare=(Compare(b"a", CompareTarget.VERSION, CompareOp.EQUAL, b"1"),))),
            BadRequest,
        ),
        (
            Proposal(Txn(compare=(Compare(b"a", CompareTarget.VALUE, CompareOp.EQUAL, 1),))),
            BadRequest,
        ),
        (Proposal(LeaseGrant(ttl_ms=0)), BadRequest),
        (Proposal(LeaseExpire((1, 2, 3))), TooLarge),
        (Proposal(Put(b"a", b"1"), client_id=5, seq=0), BadRequest),
        (Proposal(Put(b"a", b"1"), now_ms=-1), BadRequest),
    ],
)
def test_bad_input_is_refused_before_proposing_and_on_apply(
    proposal: Proposal, error: type[Exception]
) -> None:
    with pytest.raises(error):
        encode_proposal(proposal, LIMITS)
    store = KVStore(LIMITS)
    result = store.apply(1, msgspec.msgpack.encode(proposal))
    assert isinstance(result, Error)
    assert type(result.exception()) is error
    assert store.revision == 0


def test_malformed_and_oversized_entries_are_errors_not_crashes() -> None:
    store = KVStore(LIMITS)
    for index, data in enumerate([b"\xc1", b"\x91\x01", msgspec.msgpack.encode(["put"])], 1):
        result = store.apply(index, data)
        assert isinstance(result, Error)
        assert isinstance(result.exception(), BadRequest)
    with pytest.raises(TooLarge):
        decode_proposal(b"\x00" * 257, LIMITS)
    assert isinstance(store.apply(9, b"\x00" * 257), Error)


def test_range_reads_are_capped_at_range_limit_max() -> None:
    store = KVStore(LIMITS)
    for index, key in enumerate([b"a", b"b", b"c", b"d"], 1):
        store.apply_proposal(index, Proposal(Put(key, b"1")))
    result = store.get(b"a", b"\0")
    assert (len(result.kvs), result.count, result.more) == (3, 4, True)
    with pytest.raises(TooLarge):
        store.get(b"a", b"\0", limit=4)
    with pytest.raises(TooLarge):
        store.get(b"k" * 9)


def test_leases_max_is_enforced_on_apply() -> None:
    store = KVStore(LIMITS)
    store.apply_proposal(1, Proposal(LeaseGrant(ttl_ms=10)))
    refused = store.apply_proposal(2, Proposal(LeaseGrant(ttl_ms=10)))
    assert isinstance(refused, Error)
    assert len(store.leases) == 1
