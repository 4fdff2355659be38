"""Deliberately weakened ``phalanx node`` processes, for the chaos tests only.

``python weakened_node.py MODE node --id ...`` replaces part of ``RaftNode`` in this process,
then runs the ``phalanx`` command line with the remaining arguments. Nothing in the product
can switch these modes on; the tests pass this command as ``RunOptions.node_command`` and
require the checkers to catch each mode.

``stale-reads``
    Every read is served from the local state, as if ``linearizable=False`` had been asked
    (no ReadIndex): a member cut off from the others answers with what it has.
``early-ack``
    A leader answers a ``put`` as soon as it has appended it to its own log, before a
    majority has it. Acknowledged writes that had not reached a majority are lost when the
    leader is killed or cut off and another member is elected. (A killed process keeps its
    page cache, so skipping the fsync alone would lose nothing here; acknowledging before
    the commit is how "acknowledged before it was durable" can bite on one machine.)
"""

from __future__ import annotations

import sys
from typing import Any


def _stale_reads() -> None:
    from phalanx.node.driver import RaftNode

    read = RaftNode.read

    async def local_read(self: RaftNode, op: Any, *, linearizable: bool = True, **kw: Any) -> Any:
        del linearizable
        return await read(self, op, linearizable=False, **kw)

    RaftNode.read = local_read  # type: ignore[method-assign]


def _early_ack() -> None:
    from phalanx.kv import Put
    from phalanx.kv.commands import decode_proposal
    from phalanx.kv.responses import PutResult
    from phalanx.node.driver import RaftNode

    flush = RaftNode._flush_batch

    def flush_and_ack(self: RaftNode, node: Any) -> None:
        batch = list(self._batch)
        flush(self, node)
        appended = {id(future): index for index, (_, future) in self._proposals.items()}
        for data, future in batch:
            index = appended.get(id(future))
            if index is None or future.done():
                continue
            if isinstance(decode_proposal(data, self.store.limits).command, Put):
                future.set_result(PutResult(revision=index))

    RaftNode._flush_batch = flush_and_ack  # type: ignore[method-assign]


MODES = {"stale-reads": _stale_reads, "early-ack": _early_ack}


def command(mode: str) -> list[str]:
    """The ``node_command`` that starts nodes weakened by ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    return [sys.executable, __file__, mode]


def main() -> None:
    MODES[sys.argv.pop(1)]()
    from phalanx.cli.main import main as phalanx_main

    phalanx_main()


if __name__ == "__main__":
    main()
