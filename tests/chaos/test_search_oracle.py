"""The search agrees with brute force on thousands of tiny random histories.

The oracle tries every subset of the ``info`` operations and every order of the chosen ones
that respects real time (an operation that returned before another was invoked comes first),
and runs the model along it. It knows nothing of the search's shortcuts (memoisation, reads
placed first, the compact bitset), so agreement checks them all; the forgetting cache is
checked against the search with a full cache, on longer histories.
"""

import itertools
import random
from collections.abc import Sequence

import msgspec
import pytest

from phalanx.chaos.generate import ANOMALIES, generate_kv
from phalanx.chaos.history import Operation
from phalanx.chaos.linearizability import SearchLimits, search
from phalanx.chaos.models import (
    INVALID,
    Keyed,
    KVModel,
    LockModel,
    Model,
    RegisterModel,
    drop_unobservable_acquires,
)
from phalanx.chaos.verdict import Verdict
from phalanx.errors import Outcome

HISTORIES = 1500


def linearizable_by_brute_force(ops: Sequence[Operation], model: Model) -> bool:
    prepared = [(op, step) for op in ops if (step := model.prepare(op)) is not None]
    required = [p for p in prepared if p[0].outcome is Outcome.OK]
    optional = [p for p in prepared if p[0].outcome is not Outcome.OK]
    for size in range(len(optional) + 1):
        for extra in itertools.combinations(optional, size):
            for order in itertools.permutations([*required, *extra]):
                if not _respects_real_time([op for op, _ in order]):
                    continue
                state = model.init()
                for _, step in order:
                    state = step(state)
                    if state is INVALID:
                        break
                else:
                    return True
    return False


def _respects_real_time(order: list[Operation]) -> bool:
    for i, later in enumerate(order):
        for earlier in order[i + 1 :]:
            # ``earlier`` is placed after ``later`` but returned before it was invoked.
            if (
                earlier.outcome is Outcome.OK
                and earlier.complete_us is not None
                and earlier.complete_us < later.invoke_us
            ):
                return False
    return True


def _outcome(rng: random.Random) -> Outcome:
    roll = rng.random()
    if roll < 0.7:
        return Outcome.OK
    return Outcome.INDETERMINATE if roll < 0.9 else Outcome.FAILED


def _register_history(rng: random.Random) -> list[Operation]:
    ops = []
    for n in range(rng.randint(1, 6)):
        invoke = rng.randint(0, 12)
        f = rng.choice(["read", "write", "cas"])
        value = {"read": None, "write": rng.choice([1, 2]), "cas": [rng.choice([None, 1, 2]), 3]}
        outcome = _outcome(rng)
        ops.append(
            Operation(
                id=n,
                process=n,
                f=f,
                invoke_us=invoke,
                complete_us=invoke + rng.randint(0, 8),
                outcome=outcome,
                input=value[f],
                output=rng.choice([None, 1, 2, 3]) if f == "read" else None,
            )
        )
    return ops


def _kv_history(rng: random.Random) -> list[Operation]:
    ops = []
    for n in range(rng.randint(1, 6)):
        invoke = rng.randint(0, 12)
        f = rng.choice(["get", "get", "put", "append"])
        ops.append(
            Operation(
                id=n,
                process=n,
                f=f,
                invoke_us=invoke,
                complete_us=invoke + rng.randint(0, 8),
                outcome=_outcome(rng),
                key="k",
                input=None if f == "get" else rng.choice(["a", "b"]),
                output=rng.choice(["", "a", "b", "ab", "ba", "aa"]) if f == "get" else None,
            )
        )
    return ops


def _two_key_history(rng: random.Random) -> list[Operation]:
    return [msgspec.structs.replace(op, key=rng.choice(["a", "b"])) for op in _kv_history(rng)]


def _lock_history(rng: random.Random) -> list[Operation]:
    ops = []
    for n in range(rng.randint(1, 6)):
        invoke = rng.randint(0, 12)
        ops.append(
            Operation(
                id=n,
                process=rng.randint(0, 2),
                f=rng.choice(["acquire", "release"]),
                invoke_us=invoke,
                complete_us=invoke + rng.randint(0, 8),
                outcome=_outcome(rng),
            )
        )
    return ops


@pytest.mark.parametrize(
    ("model", "make"),
    [
        (RegisterModel(), _register_history),
        (KVModel(), _kv_history),
        (LockModel(), _lock_history),
        (Keyed(KVModel()), _two_key_history),
    ],
    ids=["register", "kv", "lock", "two-keys-whole"],
)
def test_search_agrees_with_brute_force(model: Model, make: object) -> None:
    rng = random.Random(20261126)
    verdicts = {Verdict.VALID: 0, Verdict.INVALID: 0}
    for _ in range(HISTORIES):
        ops = make(rng)  # type: ignore[operator]
        expected = linearizable_by_brute_force(ops, model)
        result = search(ops, model)
        assert (result.verdict is Verdict.VALID) == expected, ops
        verdicts[Verdict.VALID if expected else Verdict.INVALID] += 1
    # The generator makes both kinds, so agreement means something.
    assert min(verdicts.values()) > HISTORIES // 10, verdicts


def test_dropping_unobservable_acquires_changes_no_lock_verdict() -> None:
    # ``info`` acquires whose process invokes nothing later are left out of lock checks;
    # by brute force on the whole history and on the reduced one, the verdict is the same.
    rng = random.Random(7)
    dropped = 0
    for _ in range(HISTORIES):
        ops = _lock_history(rng)
        reduced = drop_unobservable_acquires(ops)
        dropped += len(ops) - len(reduced)
        model = LockModel()
        assert linearizable_by_brute_force(reduced, model) == linearizable_by_brute_force(
            ops, model
        ), ops
    assert dropped > HISTORIES // 10  # the case is common enough to be tested


def test_forgetting_cache_changes_no_verdict() -> None:
    # Generated histories, valid and with planted bugs, checked with a cache so small that
    # the search keeps forgetting what lies behind it. Forgetting may cost an answer
    # (unknown), never change one: valid histories are still found valid, and no planted bug
    # is ever reported valid.
    decided = 0
    for seed in range(12):
        for plant in (None, *ANOMALIES):
            ops, _ = generate_kv(
                seed, ops=200, keys=1, processes=4, info_rate=0.02, put_share=0.5, plant=plant
            )
            small = search(ops, KVModel(), limits=SearchLimits(cache_entries_max=200))
            if plant is not None:
                assert small.verdict is not Verdict.VALID, (seed, plant)
            elif small.verdict is not Verdict.UNKNOWN:
                assert small.verdict is Verdict.VALID, seed
                assert small.cache_entries > 200  # it did forget
                decided += 1
    assert decided >= 10, decided
