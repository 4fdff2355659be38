"""Seeded generators of key-value histories, linearizable by construction or with a planted bug.

:func:`generate_kv` simulates ``processes`` clients against one correct key-value store:
every operation gets an invocation time, a linearization point inside its interval and a
completion time, and the store applies operations in linearization-point order, which yields
every output. The history is therefore linearizable. Some operations (``info_rate``) end
``info``: the client gave up, and the operation took effect (at its point) or never did,
chosen by the seed. As in Jepsen, a process that ends with ``info`` is retired; the client
continues under the process number plus ``processes``.

Planted anomalies (``plant=``) break it in the way a faulty store would:

- ``stale-read``: a read returns the value its key held before a write that completed
  before the read began;
- ``lost-write``: an acknowledged write is not applied, and later reads do not show it;
- ``duplicate-apply``: an acknowledged append is applied twice.

Values are unique tokens, so a planted anomaly is always visible to some later read; the
victim is chosen (by the seed) among operations for which that holds. The same seed and
arguments always give the same history.
"""

from __future__ import annotations

import random
from typing import Final, Literal

import msgspec

from phalanx.chaos.history import Operation
from phalanx.errors import Outcome

__all__ = ["ANOMALIES", "GENERATED_OPS_MAX", "Anomaly", "Planted", "generate_kv"]

Anomaly = Literal["stale-read", "lost-write", "duplicate-apply"]
ANOMALIES: Final[tuple[Anomaly, ...]] = ("stale-read", "lost-write", "duplicate-apply")
#: The largest history the generator makes.
GENERATED_OPS_MAX: Final = 2_000_000


class Planted(msgspec.Struct, frozen=True):
    """Which operation carries the planted anomaly (the read, or the write that misbehaved)."""

    anomaly: Anomaly
    op_id: int


class _Plan(msgspec.Struct):
    process: int
    f: str
    key: str
    token: str
    invoke_us: int
    point_us: int  # the linearization point
    complete_us: int
    outcome: Outcome
    applied: bool  # info operations may never take effect


def _plans(
    rng: random.Random,
    ops: int,
    keys: int,
    processes: int,
    info_rate: float,
    read_ratio: float,
    put_share: float,
) -> list[_Plan]:
    plans: list[_Plan] = []
    clocks = [rng.randrange(0, 50) for _ in range(processes)]
    numbers = list(range(processes))
    for n in range(ops):
        slot = min(range(processes), key=lambda s: (clocks[s], s))
        invoke_us = clocks[slot]
        point_us = invoke_us + rng.randint(1, 40)
        complete_us = point_us + rng.randint(1, 40)
        roll = rng.random()
        f = "get" if roll < read_ratio else ("put" if rng.random() < put_share else "append")
        outcome = Outcome.OK
        applied = True
        if rng.random() < info_rate:
            outcome = Outcome.INDETERMINATE
            applied = f != "get" and rng.random() < 0.5
        plans.append(
            _Plan(
                process=numbers[slot],
                f=f,
                key=str(rng.randrange(keys)),
                token=f"<{n}>",
                invoke_us=invoke_us,
                point_us=point_us,
                complete_us=complete_us,
                outcome=outcome,
                applied=applied,
            )
        )
        if outcome is Outcome.INDETERMINATE:
            numbers[slot] += processes
        clocks[slot] = complete_us + rng.randint(0, 20)
    plans.sort(key=lambda p: p.invoke_us)
    return plans


def _outputs(plans: list[_Plan], copies: dict[int, int]) -> list[str | None]:
    # Apply writes at their points (``copies`` overrides how many times a write applies).
    values: dict[str, str] = {}
    outputs: list[str | None] = [None] * len(plans)
    order = sorted(range(len(plans)), key=lambda i: (plans[i].point_us, i))
    for i in order:
        p = plans[i]
        if p.f == "get":
            outputs[i] = values.get(p.key, "")
        elif p.applied:
            times = copies.get(i, 1)
            if times == 0:
                continue
            if p.f == "put":
                values[p.key] = p.token
            else:
                values[p.key] = values.get(p.key, "") + p.token * times
    return outputs


def _operations(plans: list[_Plan], outputs: list[str | None]) -> list[Operation]:
    ops = []
    for i, p in enumerate(plans):
        ok = p.outcome is Outcome.OK
        ops.append(
            Operation(
                id=i,
                process=p.process,
                f=p.f,
                invoke_us=p.invoke_us,
                outcome=p.outcome,
                complete_us=p.complete_us,
                key=p.key,
                input=None if p.f == "get" else p.token,
                output=outputs[i] if ok and p.f == "get" else None,
            )
        )
    return ops


def _state_before(plans: list[_Plan], write: int) -> str:
    values = ""
    target = plans[write]
    for i in sorted(range(len(plans)), key=lambda i: (plans[i].point_us, i)):
        if i == write:
            return values
        p = plans[i]
        if p.key == target.key and p.applied and p.f != "get":
            values = p.token if p.f == "put" else values + p.token
    return values


def _no_put_between(plans: list[_Plan], write: int, read: int) -> bool:
    # No other put could be linearized between the write and the read: then the read must
    # see the write's token, and a planted read without it cannot be explained.
    w, r = plans[write], plans[read]
    return not any(
        p.f == "put"
        and p.key == w.key
        and i != write
        and p.complete_us > w.invoke_us
        and p.invoke_us < r.complete_us
        for i, p in enumerate(plans)
    )


def generate_kv(
    seed: int,
    *,
    ops: int = 1000,
    keys: int = 10,
    processes: int = 5,
    info_rate: float = 0.0,
    read_ratio: float = 0.5,
    put_share: float = 0.1,
    plant: Anomaly | None = None,
) -> tuple[list[Operation], Planted | None]:
    """A key-value history of ``ops`` operations; with ``plant``, also where the bug is.

    ``read_ratio`` of the operations are gets; of the others, ``put_share`` are puts and the
    rest appends.
    """
    if not 1 <= ops <= GENERATED_OPS_MAX:
        raise ValueError(f"ops must be in 1..{GENERATED_OPS_MAX}")
    if keys < 1 or processes < 1:
        raise ValueError("keys and processes must be at least 1")
    rng = random.Random(seed)
    plans = _plans(rng, ops, keys, processes, info_rate, read_ratio, put_share)
    outputs = _outputs(plans, {})
    if plant is None:
        return _operations(plans, outputs), None
    writes = [
        i for i, p in enumerate(plans) if p.f != "get" and p.outcome is Outcome.OK and p.applied
    ]
    rng.shuffle(writes)
    for w in writes:
        if plant == "stale-read":
            before = _state_before(plans, w)
            reads = [
                i
                for i, p in enumerate(plans)
                if p.f == "get"
                and p.key == plans[w].key
                and p.outcome is Outcome.OK
                and p.invoke_us > plans[w].complete_us
                and outputs[i] != before
                and _no_put_between(plans, w, i)
            ]
            if reads:
                victim = reads[0]
                outputs[victim] = before
                return _operations(plans, outputs), Planted(plant, victim)
            continue
        if plant == "duplicate-apply" and plans[w].f != "append":
            continue
        changed = _outputs(plans, {w: 0 if plant == "lost-write" else 2})
        after = [
            i
            for i, p in enumerate(plans)
            if p.f == "get"
            and p.outcome is Outcome.OK
            and p.invoke_us > plans[w].complete_us
            and changed[i] != outputs[i]
            and (plant == "duplicate-apply" or _no_put_between(plans, w, i))
        ]
        if after:
            return _operations(plans, changed), Planted(plant, w)
    raise ValueError(f"no operation of this history can carry a {plant} anomaly")
