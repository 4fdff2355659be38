"""Workloads: what clients do to a cluster during a chaos run, recorded as a history.

Each workload drives the real :class:`~phalanx.client.AsyncClient` and records every call
into a :class:`~phalanx.chaos.history.Recorder` with its three-valued outcome (``ok``;
``fail`` when the call definitely did not take effect: refused, or a compare that did not
hold; ``info`` when it may have: a timeout after sending, a lost connection). The runner
calls :meth:`Workload.invoke` from each client task in a loop, then :meth:`Workload.final`
once the cluster has healed and recovered, and checks the history with the checker named by
:attr:`Workload.model`.

============  ====================================================  ==================
workload      operations                                            checker
============  ====================================================  ==================
``register``  ``read``, ``write``, ``cas`` (a txn comparing the      linearizability,
              value) on a few independent keys; values 0..4         register model
``kv``        ``get``, ``put`` and ``append`` (read, then a txn     linearizability,
              comparing the key's mod revision) on several keys     key-value model
``set``       ``add`` of unique elements (one key each), ``read``   set
              of them all now and then, and a final read
``bank``      ``transfer`` between accounts (a txn comparing both   bank (constant
              accounts' mod revisions), ``read`` of every balance   total, no overdraft)
``lock``      ``acquire`` (output: the fencing token) and           lock model and
              ``release`` of one :class:`~phalanx.client.lock.Lock`  fencing tokens
``fencing``   the lock's ``acquire``/``release``, and while held,   fencing tokens and
              ``write`` s of the token to a protected resource      the resource's
              that refuses tokens older than its last one           token order
============  ====================================================  ==================

Reads may go through a second client, ``reader``, that the runner keeps on one member (each
client task on a different one, as Jepsen binds each client to a node): every member serves
linearizable reads (ReadIndex), so a member cut off from the others must refuse them rather
than answer from its own, possibly stale, state. Keys live under :data:`KEY_PREFIX`.

Every call is bounded by the client's own total timeout and, as a backstop, by
``op_timeout_s`` here; a call cut off by it is ``info``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from phalanx.chaos.history import Recorder
from phalanx.client import AsyncClient
from phalanx.client.lock import Lock
from phalanx.errors import Indeterminate, Outcome, PhalanxError, outcome_of
from phalanx.kv import Compare, CompareOp, CompareTarget, Put

__all__ = [
    "KEY_PREFIX",
    "WORKLOADS",
    "BankWorkload",
    "FencingWorkload",
    "KVWorkload",
    "LockWorkload",
    "RegisterWorkload",
    "SetWorkload",
    "Workload",
    "workload_named",
]

KEY_PREFIX: Final = "chaos/"
#: Longest value an ``append`` may grow a key to before the next ``put`` is forced.
KV_VALUE_CHARS_MAX: Final = 400
#: Balances of the bank workload: accounts and the starting balance of each.
BANK_ACCOUNTS: Final = 5
BANK_BALANCE: Final = 20
BANK_TRANSFER_MAX: Final = 5
#: The lock workload's lease, and the longest a holder keeps the lock.
LOCK_TTL_S: Final = 5.0
LOCK_HOLD_S_MAX: Final = 0.2
#: Resource writes of one hold in the fencing workload, and the longest pause before each.
FENCED_WRITES_PER_HOLD: Final = 5
FENCED_WRITE_GAP_S_MAX: Final = 0.3
#: Digits of a token stored in the fencing workload's resource (compared as text).
_TOKEN_DIGITS: Final = 16


class CompareFailed(Exception):
    """A txn's compare did not hold: the operation definitely did not take effect."""


class Workload(Protocol):
    """One kind of client activity; see the module docstring."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str:
        """The ``phalanx chaos check --model`` that judges its history."""
        ...

    @property
    def bank_total(self) -> int | None: ...

    async def setup(self, client: AsyncClient) -> None:
        """Prepare the keys before the clients start (on a healthy cluster)."""
        ...

    async def invoke(
        self,
        client: AsyncClient,
        rng: random.Random,
        process: int,
        recorder: Recorder,
        *,
        reader: AsyncClient | None = None,
    ) -> Outcome:
        """Run and record one operation; its outcome. Reads go through ``reader`` when
        given (a client kept on one member, see the module docstring)."""
        ...

    async def final(self, client: AsyncClient, process: int, recorder: Recorder) -> Outcome:
        """The final operation(s) after the heal (a read of everything, where it matters)."""
        ...

    async def stop(self, client: AsyncClient, process: int, recorder: Recorder) -> None:
        """A client task ends: give up what it holds (recorded like any operation)."""
        ...


async def record(
    recorder: Recorder,
    process: int,
    f: str,
    value: Any,
    call: Callable[[], Awaitable[Any]],
    *,
    key: str | None = None,
    timeout_s: float,
) -> Outcome:
    """Invoke ``call`` as operation ``f`` and record how it ended."""
    handle = recorder.invoke(process, f, value, key=key)
    try:
        async with asyncio.timeout(timeout_s):
            output = await call()
    except CompareFailed as exc:
        recorder.fail(handle, str(exc) or "compare failed")
        return Outcome.FAILED
    except TimeoutError:
        recorder.info(handle, "timed-out")
        return Outcome.INDETERMINATE
    except Exception as exc:
        outcome = outcome_of(exc)
        error = f"{type(exc).__name__}: {exc}"[:200]
        if outcome is Outcome.FAILED:
            recorder.fail(handle, error)
        else:
            recorder.info(handle, error)
            outcome = Outcome.INDETERMINATE
        return outcome
    recorder.ok(handle, output)
    return Outcome.OK


def _key(name: str) -> bytes:
    return f"{KEY_PREFIX}{name}".encode()


def _int_or_none(value: bytes | None) -> int | None:
    return None if value is None else int(value)


class _Base:
    name = ""
    model = ""
    bank_total: int | None = None

    def __init__(self, *, op_timeout_s: float = 3.0, keys: int = 3) -> None:
        if keys < 1:
            raise ValueError(f"keys: at least 1, got {keys}")
        self.op_timeout_s = op_timeout_s
        self.keys = keys

    async def setup(self, client: AsyncClient) -> None:
        """Nothing to prepare by default."""

    async def final(self, client: AsyncClient, process: int, recorder: Recorder) -> Outcome:  # noqa: ARG002
        return Outcome.OK

    async def stop(self, client: AsyncClient, process: int, recorder: Recorder) -> None:
        """Nothing held by default."""


class RegisterWorkload(_Base):
    """Read, write and compare-and-set on ``keys`` independent registers."""

    name = "register"
    model = "register"

    async def invoke(
        self,
        client: AsyncClient,
        rng: random.Random,
        process: int,
        recorder: Recorder,
        *,
        reader: AsyncClient | None = None,
    ) -> Outcome:
        name = f"r{rng.randrange(self.keys)}"
        key = _key(name)
        draw = rng.random()
        if draw < 0.5:

            async def read() -> int | None:
                return _int_or_none(await (reader or client).get(key))

            return await record(
                recorder, process, "read", None, read, key=name, timeout_s=self.op_timeout_s
            )
        if draw < 0.75:
            value = rng.randrange(5)

            async def write() -> None:
                await client.put(key, str(value).encode())

            return await record(
                recorder, process, "write", value, write, key=name, timeout_s=self.op_timeout_s
            )
        expected, new = rng.randrange(5), rng.randrange(5)

        async def cas() -> None:
            result = await client.txn(
                compare=[
                    Compare(key, CompareTarget.VALUE, CompareOp.EQUAL, str(expected).encode())
                ],
                success=[Put(key, str(new).encode())],
            )
            if not result.succeeded:
                raise CompareFailed(f"value is not {expected}")

        return await record(
            recorder, process, "cas", [expected, new], cas, key=name, timeout_s=self.op_timeout_s
        )


class KVWorkload(_Base):
    """Get, put and append on ``keys`` keys (default 5)."""

    name = "kv"
    model = "kv"

    def __init__(self, *, op_timeout_s: float = 3.0, keys: int = 5) -> None:
        super().__init__(op_timeout_s=op_timeout_s, keys=keys)
        self._counter = 0

    async def invoke(
        self,
        client: AsyncClient,
        rng: random.Random,
        process: int,
        recorder: Recorder,
        *,
        reader: AsyncClient | None = None,
    ) -> Outcome:
        name = f"k{rng.randrange(self.keys)}"
        key = _key(name)
        draw = rng.random()
        self._counter += 1
        token = f"{process}.{self._counter} "
        if draw < 0.4:

            async def get() -> str:
                value = await (reader or client).get(key)
                return "" if value is None else value.decode()

            return await record(
                recorder, process, "get", None, get, key=name, timeout_s=self.op_timeout_s
            )
        if draw < 0.6:

            async def put() -> None:
                await client.put(key, token.encode())

            return await record(
                recorder, process, "put", token, put, key=name, timeout_s=self.op_timeout_s
            )

        async def append() -> None:
            current = await client.range(key)
            kv = current.kvs[0] if current.kvs else None
            old = b"" if kv is None else kv.value
            if len(old) > KV_VALUE_CHARS_MAX:
                raise CompareFailed("value too long to append to")
            revision = 0 if kv is None else kv.mod_revision
            result = await client.txn(
                compare=[Compare(key, CompareTarget.MOD_REVISION, CompareOp.EQUAL, revision)],
                success=[Put(key, old + token.encode())],
            )
            if not result.succeeded:
                raise CompareFailed("changed since read")

        return await record(
            recorder, process, "append", token, append, key=name, timeout_s=self.op_timeout_s
        )


class SetWorkload(_Base):
    """Adds of unique elements, occasional reads of the whole set, and a final read."""

    name = "set"
    model = "set"

    def __init__(self, *, op_timeout_s: float = 3.0, keys: int = 1) -> None:
        super().__init__(op_timeout_s=op_timeout_s, keys=keys)
        self._next = 0

    async def _read(self, client: AsyncClient) -> list[int]:
        listing = await client.range(_key("set/"), prefix=True, keys_only=True)
        prefix_len = len(_key("set/"))
        return sorted(int(kv.key[prefix_len:]) for kv in listing.kvs)

    async def invoke(
        self,
        client: AsyncClient,
        rng: random.Random,
        process: int,
        recorder: Recorder,
        *,
        reader: AsyncClient | None = None,
    ) -> Outcome:
        if rng.random() < 0.1:

            async def read() -> list[int]:
                return await self._read(reader or client)

            return await record(recorder, process, "read", None, read, timeout_s=self.op_timeout_s)
        element = self._next
        self._next += 1

        async def add() -> None:
            await client.put(_key(f"set/{element:08d}"), b"1")

        return await record(recorder, process, "add", element, add, timeout_s=self.op_timeout_s)

    async def final(self, client: AsyncClient, process: int, recorder: Recorder) -> Outcome:
        async def read() -> list[int]:
            return await self._read(client)

        return await record(recorder, process, "read", None, read, timeout_s=self.op_timeout_s)


class BankWorkload(_Base):
    """Transfers between :data:`BANK_ACCOUNTS` accounts and reads of every balance."""

    name = "bank"
    model = "bank"
    bank_total = BANK_ACCOUNTS * BANK_BALANCE

    def _account(self, n: int) -> bytes:
        return _key(f"bank/{n}")

    async def setup(self, client: AsyncClient) -> None:
        await client.txn(
            success=[
                Put(self._account(n), str(BANK_BALANCE).encode()) for n in range(BANK_ACCOUNTS)
            ]
        )

    async def _balances(self, client: AsyncClient) -> tuple[dict[str, int], dict[int, int]]:
        listing = await client.range(_key("bank/"), prefix=True)
        prefix_len = len(_key("bank/"))
        balances = {kv.key[prefix_len:].decode(): int(kv.value) for kv in listing.kvs}
        revisions = {int(kv.key[prefix_len:]): kv.mod_revision for kv in listing.kvs}
        return balances, revisions

    async def invoke(
        self,
        client: AsyncClient,
        rng: random.Random,
        process: int,
        recorder: Recorder,
        *,
        reader: AsyncClient | None = None,
    ) -> Outcome:
        if rng.random() < 0.3:  # the operation mix
            return await self.final(reader or client, process, recorder)
        source, target = rng.sample(range(BANK_ACCOUNTS), 2)
        amount = rng.randint(1, BANK_TRANSFER_MAX)

        async def transfer() -> None:
            balances, revisions = await self._balances(client)
            have = balances.get(str(source), 0)
            if have < amount:
                raise CompareFailed(f"account {source} holds {have} < {amount}")
            result = await client.txn(
                compare=[
                    Compare(self._account(n), CompareTarget.MOD_REVISION, CompareOp.EQUAL, r)
                    for n, r in ((source, revisions[source]), (target, revisions[target]))
                ],
                success=[
                    Put(self._account(source), str(have - amount).encode()),
                    Put(
                        self._account(target),
                        str(balances.get(str(target), 0) + amount).encode(),
                    ),
                ],
            )
            if not result.succeeded:
                raise CompareFailed("balances changed since read")

        move = {"from": source, "to": target, "amount": amount}
        return await record(
            recorder, process, "transfer", move, transfer, timeout_s=self.op_timeout_s
        )

    async def final(self, client: AsyncClient, process: int, recorder: Recorder) -> Outcome:
        async def read() -> dict[str, int]:
            return (await self._balances(client))[0]

        return await record(recorder, process, "read", None, read, timeout_s=self.op_timeout_s)


class LockWorkload(_Base):
    """Each client task takes one lock (:class:`phalanx.client.lock.Lock`, on a lease of
    :data:`LOCK_TTL_S`), holds it a moment, and releases it.

    ``acquire`` returns the fencing token; ``release`` takes it. A release that does not
    succeed is recorded ``info``: the lease still ends by itself, at some later time.
    """

    name = "lock"
    model = "lock"

    def __init__(self, *, op_timeout_s: float = 3.0, keys: int = 1) -> None:
        super().__init__(op_timeout_s=op_timeout_s, keys=keys)
        self._locks: dict[int, Lock] = {}

    def _lock(self, client: AsyncClient) -> Lock:
        lock = self._locks.get(id(client))
        if lock is None:
            lock = Lock(client, "chaos-lock", ttl_s=LOCK_TTL_S)
            self._locks[id(client)] = lock
        return lock

    async def invoke(
        self,
        client: AsyncClient,
        rng: random.Random,
        process: int,
        recorder: Recorder,
        *,
        reader: AsyncClient | None = None,  # noqa: ARG002 - the protocol's signature
    ) -> Outcome:
        lock = self._lock(client)
        held = lock.held
        if held is None:

            async def acquire() -> int:
                return (await lock.acquire(timeout_s=self.op_timeout_s)).fencing_token

            return await record(
                recorder, process, "acquire", None, acquire, timeout_s=2 * self.op_timeout_s
            )
        await asyncio.sleep(rng.uniform(0.0, LOCK_HOLD_S_MAX))
        return await self._release(lock, held.fencing_token, process, recorder)

    async def _release(self, lock: Lock, token: int, process: int, recorder: Recorder) -> Outcome:
        async def release() -> None:
            try:
                await lock.release()
            except PhalanxError as exc:
                # The lease was not revoked, but it ends by itself later: not a failure.
                raise Indeterminate(f"release not confirmed: {exc}") from exc

        return await record(
            recorder, process, "release", token, release, timeout_s=self.op_timeout_s
        )

    async def final(self, client: AsyncClient, process: int, recorder: Recorder) -> Outcome:  # noqa: ARG002
        return Outcome.OK

    async def stop(self, client: AsyncClient, process: int, recorder: Recorder) -> None:
        lock = self._locks.pop(id(client), None)
        if lock is not None and lock.held is not None:
            await self._release(lock, lock.held.fencing_token, process, recorder)


class FencingWorkload(LockWorkload):
    """The lock workload with a protected resource: while it believes it holds the lock, a
    client writes its fencing token to the resource :data:`FENCED_WRITES_PER_HOLD` times,
    each after a pause of up to :data:`FENCED_WRITE_GAP_S_MAX`, then releases.

    The resource is one key; a write is a txn that stores the token only when the stored one
    is not larger, so a holder whose lease expired under it (a clock jump, a long pause) is
    refused once a newer holder has written. Holds may overlap under such faults; the
    checker (``--model fencing``) requires only that the resource's accepted writes never go
    back in token order. :meth:`write_resource` is the one place a resource that ignores
    tokens would differ.
    """

    name = "fencing"
    model = "fencing"
    resource = _key("fenced-resource")

    def __init__(self, *, op_timeout_s: float = 3.0, keys: int = 1) -> None:
        super().__init__(op_timeout_s=op_timeout_s, keys=keys)
        self._writes: dict[int, int] = {}

    async def setup(self, client: AsyncClient) -> None:
        await client.put(self.resource, b"0" * _TOKEN_DIGITS)

    async def write_resource(self, client: AsyncClient, token: int) -> None:
        """Store ``token`` unless the resource holds a larger one (``CompareFailed``)."""
        # Zero-padded tokens compare as text like numbers: stored < token + 1.
        bound = str(token + 1).zfill(_TOKEN_DIGITS).encode()
        result = await client.txn(
            compare=[Compare(self.resource, CompareTarget.VALUE, CompareOp.LESS, bound)],
            success=[Put(self.resource, str(token).zfill(_TOKEN_DIGITS).encode())],
        )
        if not result.succeeded:
            raise CompareFailed("fenced off: the resource holds a newer token")

    async def invoke(
        self,
        client: AsyncClient,
        rng: random.Random,
        process: int,
        recorder: Recorder,
        *,
        reader: AsyncClient | None = None,
    ) -> Outcome:
        lock = self._lock(client)
        held = lock.held
        if held is None:
            self._writes.pop(id(client), None)
            return await super().invoke(client, rng, process, recorder, reader=reader)
        token = held.fencing_token
        done = self._writes.get(id(client), 0)
        if done >= FENCED_WRITES_PER_HOLD:
            self._writes.pop(id(client), None)
            return await self._release(lock, token, process, recorder)
        self._writes[id(client)] = done + 1
        await asyncio.sleep(rng.uniform(0.0, FENCED_WRITE_GAP_S_MAX))

        async def write() -> None:
            await self.write_resource(client, token)

        return await record(recorder, process, "write", token, write, timeout_s=self.op_timeout_s)


WORKLOADS: Final[dict[str, type[_Base]]] = {
    "register": RegisterWorkload,
    "kv": KVWorkload,
    "set": SetWorkload,
    "bank": BankWorkload,
    "lock": LockWorkload,
    "fencing": FencingWorkload,
}


def workload_named(name: str, *, op_timeout_s: float = 3.0) -> Workload:
    factory = WORKLOADS.get(name)
    if factory is None:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
    workload: Workload = factory(op_timeout_s=op_timeout_s)  # type: ignore[assignment]
    return workload
