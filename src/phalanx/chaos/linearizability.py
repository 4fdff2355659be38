"""The linearizability search of one partition: Wing & Gong's search with Lowe's memoisation.

The history becomes one list of events in time order: the call of every operation and the
return of every operation that returned ``ok``. (An ``info`` operation has no return: it may
take effect at any time after its call, so it never forces anything; ``fail`` operations and
unobserved reads are dropped by the model before the search.)

The search walks the list from its head. At a call it tries to *linearize* that operation
now: run the model's step on the current state; when the step is possible, the operation is
lifted out of the list (call and return), pushed on a stack with the state before it, and the
walk restarts from the head. At a return it is stuck: that operation returned before it could
be placed, so the last choice was wrong; pop it, put it back into the list, restore the state
and try the next call after it. The history is linearizable when every ``ok`` operation has
been lifted, and not linearizable when a return is reached with nothing left to pop.

Memoisation (Lowe, "Testing for linearizability", 2017) makes this practical: the search from
a configuration depends only on the set of operations linearized so far and the model state,
so every configuration tried is remembered as ``(bitset, state)`` and never explored twice.
The bitset is kept compact (the lowest unplaced operation, and a window of bits above it), so
its size follows the concurrency, not the length of the history.

Two refinements of our own keep the tree small. A read (an operation that never changes the
state) that fits the current state is placed at once and never branched on: any order that
places it later stays valid with the read moved earlier. And every walk from the head first
places such reads, before trying any write, which spares most wrong guesses in read-heavy
histories.

Every search is bounded: ``ops_max`` operations per partition, ``cache_entries_max``
remembered configurations, and a deadline, all checked as it runs. When the cache is full,
the configurations behind the lowest unplaced operation are forgotten (the cache saves work,
it decides nothing); only when that frees less than half of it, or at the deadline, or over
``ops_max``, is the verdict ``unknown``.
On a violation the result carries the longest partial linearization found, the operation
that could not be placed there, and how many operations completed before that point (the
longest linearizable prefix of the history in completion order).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Final

import msgspec

from phalanx.chaos.history import Operation
from phalanx.chaos.models import INVALID, Model, Step
from phalanx.chaos.verdict import Verdict
from phalanx.errors import Outcome, invariant

__all__ = [
    "CACHE_ENTRIES_MAX",
    "DEADLINE_CHECK_EVERY",
    "PARTITION_OPS_MAX",
    "PartitionResult",
    "SearchLimits",
    "search",
]

#: Operations one partition may hold (after the model drops the ones that cannot matter).
PARTITION_OPS_MAX: Final = 200_000
#: Configurations (linearized set, state) remembered by one search: about 250 bytes each
#: in the histories measured, so about 250 MB per search at the bound.
CACHE_ENTRIES_MAX: Final = 1_000_000
#: The search reads the clock once per this many steps.
DEADLINE_CHECK_EVERY: Final = 1024


_Stack = tuple[int, Hashable, int, int, "_Stack"] | None


def _unwind(stack: _Stack, op_of: list[int], prepared: list[tuple[Operation, Step]]) -> list[int]:
    """The operation ids of a stack of choices, oldest first."""
    ids = []
    while stack is not None:
        node, _, _, _, stack = stack
        ids.append(prepared[op_of[abs(node)]][0].id)
    ids.reverse()
    return ids


class SearchLimits(msgspec.Struct, frozen=True, kw_only=True):
    ops_max: int = PARTITION_OPS_MAX
    cache_entries_max: int = CACHE_ENTRIES_MAX


class PartitionResult(msgspec.Struct, kw_only=True):
    """The outcome of one search.

    ``linearization`` (op ids, in linearization order) and ``stuck_op`` are filled for an
    invalid verdict: the longest partial linearization found and the operation whose return
    it could not get past. ``prefix_ops`` is how many operations returned before that return.
    ``witness_ops`` is how many operations were invoked before it: the search never looked
    past that point, so those operations alone are already not linearizable (a smaller
    witness than the partition).
    ``reason`` says why a verdict is unknown.
    """

    key: str | None
    verdict: Verdict
    ops: int
    ops_searched: int
    linearization: list[int] = msgspec.field(default_factory=list)
    stuck_op: int | None = None
    prefix_ops: int = 0
    witness_ops: int = 0
    reason: str = ""
    cache_entries: int = 0
    steps: int = 0
    elapsed_s: float = 0.0


# One hot loop on purpose: splitting it into calls would cost a third of its speed.
def search(  # noqa: PLR0912, PLR0915
    ops: Sequence[Operation],
    model: Model,
    *,
    key: str | None = None,
    deadline_s: float | None = None,
    now_s: Callable[[], float] = time.monotonic,
    limits: SearchLimits | None = None,
) -> PartitionResult:
    """Decide whether ``ops`` is linearizable with respect to ``model``.

    ``deadline_s`` is a value of ``now_s()`` after which the search gives up with ``unknown``.
    """
    limits = limits or SearchLimits()
    started_s = now_s()
    prepared: list[tuple[Operation, Step]] = []
    for op in sorted(ops, key=lambda op: (op.invoke_us, op.id)):
        step = model.prepare(op)
        if step is not None:
            prepared.append((op, step))
    n = len(prepared)

    def finish(verdict: Verdict, **fields: object) -> PartitionResult:
        return PartitionResult(
            key=key,
            verdict=verdict,
            ops=len(ops),
            ops_searched=n,
            elapsed_s=now_s() - started_s,
            **fields,  # type: ignore[arg-type]
        )

    if n > limits.ops_max:
        return finish(Verdict.UNKNOWN, reason=f"{n} operations exceed ops_max={limits.ops_max}")

    # Events in time order; at equal times calls come first (the operations overlap).
    events: list[tuple[int, int, int]] = []
    for i, (op, _) in enumerate(prepared):
        events.append((op.invoke_us, 0, i))
        if op.outcome is Outcome.OK:
            done_us = op.complete_us if op.complete_us is not None else op.invoke_us
            events.append((done_us, 1, i))
    events.sort()

    # A doubly linked list of events: node 0 is the head, node len(events) + 1 the end.
    size = len(events) + 2
    end = size - 1
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    op_of = [-1] * size
    is_call = [False] * size
    ret_node = [-1] * n
    for node, (_, kind, i) in enumerate(events, start=1):
        op_of[node] = i
        if kind == 0:
            is_call[node] = True
        else:
            ret_node[i] = node
    steps = [step for _, step in prepared]
    is_ok = [op.outcome is Outcome.OK for op, _ in prepared]
    is_read = [model.read_only(op) for op, _ in prepared]

    remaining = sum(is_ok)
    state: Hashable = model.init()
    # The set of linearized operations, compactly: every operation numbered below ``low`` (in
    # invocation order), plus bit k of ``window`` for operation ``low + k``. Operations are
    # placed roughly in invocation order, so the window stays about as wide as the
    # concurrency, however long the history.
    low = 0
    window = 0
    # The stack of choices is a linked list of tuples (node, state before, low, window, rest),
    # so that keeping the deepest one seen costs a reference, not a copy.
    stack: _Stack = None
    cache: set[tuple[int, int, Hashable]] = set()
    cache_max = limits.cache_entries_max
    forgotten = 0
    best_node = -1
    best_stack: _Stack = None
    counter = 0
    entry = nxt[0]
    # Each walk from the head first places the reads that fit (they cost no branch), then
    # tries the other operations in invocation order.
    reads_first = True
    while remaining:
        counter += 1
        if counter % DEADLINE_CHECK_EVERY == 0 and deadline_s is not None and now_s() > deadline_s:
            return finish(
                Verdict.UNKNOWN,
                reason="deadline",
                cache_entries=len(cache) + forgotten,
                steps=counter,
            )
        i = op_of[entry]
        if is_call[entry]:
            if reads_first and not is_read[i]:
                entry = nxt[entry]
                continue
            after = steps[i](state)
            if after is not INVALID:
                if i == low:
                    wide = window | 1
                    ones = (wide ^ (wide + 1)).bit_length() - 1  # trailing ones
                    config = (low + ones, wide >> ones, after)
                else:
                    config = (low, window | (1 << (i - low)), after)
                if config not in cache:
                    cache.add(config)
                    if len(cache) > cache_max:
                        # Forget configurations behind the oldest unplaced operation: the
                        # search rarely goes back there, and the cache saves work, it decides
                        # nothing.
                        kept = {c for c in cache if c[0] >= low}
                        if len(kept) > cache_max // 2:
                            return finish(
                                Verdict.UNKNOWN,
                                reason=f"cache_entries_max={cache_max} reached",
                                cache_entries=len(cache) + forgotten,
                                steps=counter,
                            )
                        forgotten += len(cache) - len(kept)
                        cache = kept
                    # A read that fits now is placed now, without trying the alternatives:
                    # any linearization placing it later stays one with it moved here.
                    stack = (-entry if is_read[i] else entry, state, low, window, stack)
                    state = after
                    low, window = config[0], config[1]
                    if is_ok[i]:
                        remaining -= 1
                    # Lift the call, then the return.
                    prv[nxt[entry]] = prv[entry]
                    nxt[prv[entry]] = nxt[entry]
                    ret = ret_node[i]
                    if ret >= 0:
                        prv[nxt[ret]] = prv[ret]
                        nxt[prv[ret]] = nxt[ret]
                    entry = nxt[0]
                    reads_first = True
                    continue
                if not is_read[i]:
                    entry = nxt[entry]
                    continue
                # A fitting read whose configuration already failed: so does this one.
            else:
                entry = nxt[entry]
                continue
        elif reads_first:
            reads_first = False
            entry = nxt[0]
            continue
        else:
            # A return: its operation was not placed in time.
            invariant(entry != end, "the search walked past every pending return")
            if entry > best_node:
                best_node = entry
                best_stack = stack
        # Undo choices back to the last one that had alternatives (reads had none).
        while stack is not None:
            node, state, low, window, stack = stack
            forced = node < 0
            node = abs(node)
            i = op_of[node]
            if is_ok[i]:
                remaining += 1
            ret = ret_node[i]
            if ret >= 0:
                nxt[prv[ret]] = ret
                prv[nxt[ret]] = ret
            nxt[prv[node]] = node
            prv[nxt[node]] = node
            if not forced:
                # Its alternatives are the calls after it, all of them, reads or not.
                entry = nxt[node]
                reads_first = False
                break
        else:
            break
    else:
        return finish(Verdict.VALID, cache_entries=len(cache) + forgotten, steps=counter)

    stuck = op_of[best_node]
    prefix = sum(1 for node in range(1, best_node) if not is_call[node])
    witness = sum(1 for node in range(1, best_node) if is_call[node])
    return finish(
        Verdict.INVALID,
        linearization=_unwind(best_stack, op_of, prepared),
        stuck_op=prepared[stuck][0].id,
        prefix_ops=prefix,
        witness_ops=witness,
        cache_entries=len(cache) + forgotten,
        steps=counter,
    )
