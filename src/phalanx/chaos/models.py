"""Sequential specifications: small pure classes a linearizability search runs operations on.

A model turns each operation into a *step*: a function from a state to the next state, or to
:data:`INVALID` when the operation, with the output it returned, is impossible in that state.
States are immutable and hashable (the search memoises them). ``prepare`` returns None for an
operation that cannot matter to linearizability: a ``fail`` (it did not happen) and an
``info`` read (it changes nothing and nobody saw its result).

An ``info`` operation that changes state is given a step that accepts whatever it would have
returned, because nobody saw its output; that it may also *never* take effect is covered by
the search, which may leave it unlinearized to the end.

==============  ==================================================  =========================
model           operations (``f``: input -> output)                  state
==============  ==================================================  =========================
``register``    ``read``: -> value; ``write``: value;                 the value (None at first)
                ``cas``: [expected, new]
``kv``          ``get``/``read``: -> value; ``put``: value;           the string ("" at first)
                ``append``: suffix
``lock``        ``acquire``; ``release``                              the holding process
==============  ==================================================  =========================

Each model describes one object; histories over many keys are checked per key (see
:mod:`phalanx.chaos.partition`) or whole with :class:`Keyed`, whose state maps every key to
the inner model's state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final, Protocol

from phalanx.chaos.history import HistoryError, Operation
from phalanx.errors import Outcome

__all__ = [
    "INVALID",
    "MODELS",
    "KVModel",
    "Keyed",
    "LockModel",
    "Model",
    "RegisterModel",
    "Step",
    "drop_unobservable_acquires",
    "model_named",
]


class _Invalid:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


#: What a step returns when its operation cannot happen in the state it is given.
INVALID: Final = _Invalid()

Step = Callable[[Hashable], Hashable]


class Model(Protocol):
    """A sequential specification of one object."""

    @property
    def name(self) -> str: ...

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def prepare(self, op: Operation) -> Step | None:
        """The step of ``op``, or None when ``op`` cannot affect the verdict."""
        ...

    def read_only(self, op: Operation) -> bool:
        """True when ``op`` never changes the state (its step returns its input or INVALID)."""
        ...

    def describe(self, op: Operation) -> str:
        """A short human description of ``op`` for reports, e.g. ``write 3`` or ``read -> 1``."""
        ...


def _unknown(op: Operation, model: str) -> HistoryError:
    return HistoryError(f"operation {op.id}: the {model} model has no operation {op.f!r}")


def _describe(op: Operation, verb: str, *, show_input: bool, show_output: bool) -> str:
    text = verb
    if show_input:
        text += f" {op.input!r}"
    if op.outcome is Outcome.INDETERMINATE:
        return text + " -> ?"
    if op.outcome is Outcome.FAILED:
        return text + " -> fail"
    if show_output:
        text += f" -> {op.output!r}"
    return text


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, Hashable):
        return value
    raise HistoryError(f"value {value!r} cannot be a model state")


class RegisterModel:
    """A single register with read, write and compare-and-set."""

    name: Final = "register"

    def init(self) -> Hashable:
        return None

    def prepare(self, op: Operation) -> Step | None:
        if op.outcome is Outcome.FAILED:
            return None
        known = op.outcome is Outcome.OK
        if op.f == "read":
            if not known:
                return None
            seen = _hashable(op.output)

            def read(state: Hashable) -> Hashable:
                return state if state == seen else INVALID

            return read
        if op.f == "write":
            value = _hashable(op.input)
            return lambda _state: value
        if op.f == "cas":
            pair = op.input
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise HistoryError(f"operation {op.id}: cas needs [expected, new]")
            expected, new = _hashable(pair[0]), _hashable(pair[1])
            if known:
                return lambda state: new if state == expected else INVALID
            return lambda state: new if state == expected else state
        raise _unknown(op, self.name)

    def read_only(self, op: Operation) -> bool:
        return op.f == "read"

    def describe(self, op: Operation) -> str:
        return _describe(op, op.f, show_input=op.f != "read", show_output=op.f == "read")


class KVModel:
    """One key of a key-value store: get (or read), put, append; missing keys read as ""."""

    name: Final = "kv"

    def init(self) -> Hashable:
        return ""

    def prepare(self, op: Operation) -> Step | None:
        if op.outcome is Outcome.FAILED:
            return None
        if op.f in {"get", "read"}:
            if op.outcome is not Outcome.OK:
                return None
            seen = "" if op.output is None else op.output

            def get(state: Hashable) -> Hashable:
                return state if state == seen else INVALID

            return get
        if op.f == "put":
            value = "" if op.input is None else str(op.input)
            return lambda _state: value
        if op.f == "append":
            suffix = "" if op.input is None else str(op.input)

            def append(state: Hashable) -> Hashable:
                return f"{state}{suffix}"

            return append
        raise _unknown(op, self.name)

    def read_only(self, op: Operation) -> bool:
        return op.f in {"get", "read"}

    def describe(self, op: Operation) -> str:
        reads = op.f in {"get", "read"}
        return _describe(op, op.f, show_input=not reads, show_output=reads)


class LockModel:
    """A mutual-exclusion lock held by one process at a time (state: the holder or None)."""

    name: Final = "lock"

    def init(self) -> Hashable:
        return None

    def prepare(self, op: Operation) -> Step | None:
        if op.outcome is Outcome.FAILED:
            return None
        me = op.process
        known = op.outcome is Outcome.OK
        if op.f == "acquire":
            if known:
                return lambda state: me if state is None else INVALID
            return lambda state: me if state is None else state
        if op.f == "release":
            if known:
                return lambda state: None if state == me else INVALID
            return lambda state: None if state == me else state
        raise _unknown(op, self.name)

    def read_only(self, op: Operation) -> bool:  # noqa: ARG002 - the protocol's signature
        return False

    def describe(self, op: Operation) -> str:
        return _describe(op, op.f, show_input=False, show_output=False)


def drop_unobservable_acquires(ops: Sequence[Operation]) -> list[Operation]:
    """``ops`` without the ``info`` acquires that nothing can observe.

    An ``info`` acquire of process *p* is dropped when every other operation of *p* was
    invoked before it and definitely over (``ok`` or ``fail``) before it was invoked: then
    no operation of *p* can take place after it. Checking the lock model, such an acquire
    may always be taken never to have happened: an ``info`` operation may take effect or
    not, and no operation of the lock model observes the holder except the holder's own
    release, which never comes. Had the acquire taken effect, the lock would have stayed
    held from then on, no other acquire could have succeeded afterwards, and leaving the
    acquire out changes nothing for the operations after it. Dropping these keeps the
    verdict (``test_search_oracle.py`` checks it against brute force) and spares the search
    the orders it would try with each: they are most of a lock history's ``info``
    operations, since a client whose acquire timed out is retired.
    """
    by_process: dict[int, list[Operation]] = {}
    for op in ops:
        by_process.setdefault(op.process, []).append(op)

    def unobservable(op: Operation) -> bool:
        if op.f != "acquire" or op.outcome is not Outcome.INDETERMINATE:
            return False
        return all(
            other.outcome is not Outcome.INDETERMINATE
            and other.complete_us is not None
            and other.complete_us < op.invoke_us
            for other in by_process[op.process]
            if other is not op
        )

    return [op for op in ops if not unobservable(op)]


class Keyed:
    """Many independent objects of ``inner``'s kind, one per key, checked as a whole.

    Each key gets a slot the first time an operation on it is prepared; the state is a tuple
    of the inner states by slot (padded with fresh states up to the number of keys). Checking
    per key with :mod:`phalanx.chaos.partition` gives the same verdict, much faster.
    """

    __slots__ = ("_slots", "inner")

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self._slots: dict[str | None, int] = {}

    @property
    def name(self) -> str:
        return f"keyed-{self.inner.name}"

    def init(self) -> Hashable:
        return ()

    def prepare(self, op: Operation) -> Step | None:
        step = self.inner.prepare(op)
        if step is None:
            return None
        slot = self._slots.setdefault(op.key, len(self._slots))
        fresh = self.inner.init()
        slots = self._slots

        def keyed(state: Hashable) -> Hashable:
            states: tuple[Hashable, ...] = state  # type: ignore[assignment]
            if len(states) < len(slots):
                states += (fresh,) * (len(slots) - len(states))
            after = step(states[slot])
            if after is INVALID:
                return INVALID
            return (*states[:slot], after, *states[slot + 1 :])

        return keyed

    def read_only(self, op: Operation) -> bool:
        return self.inner.read_only(op)

    def describe(self, op: Operation) -> str:
        return f"{op.key}: {self.inner.describe(op)}"


MODELS: Final[dict[str, Callable[[], Model]]] = {
    "register": RegisterModel,
    "kv": KVModel,
    "lock": LockModel,
}


def model_named(name: str) -> Model:
    """A fresh model by its name: ``register``, ``kv`` or ``lock``."""
    factory = MODELS.get(name)
    if factory is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return factory()
