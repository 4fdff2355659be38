"""A node whose loops fail stops serving, says so, and raises the failure on close."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node_cluster import cluster, leader_of
from phalanx.errors import Timeout


async def test_a_failed_fsync_stops_the_node_visibly(tmp_path: Path) -> None:
    async with cluster(tmp_path, (1,), transfer_on_close=False) as nodes:
        node = await leader_of(nodes)
        storage = node._core_storage()

        def broken_save(*_args: Any, **_kwargs: Any) -> None:
            raise OSError(5, "Input/output error")

        storage.save = broken_save  # type: ignore[method-assign]
        with pytest.raises(Timeout):
            await node.put(b"k", b"v", timeout_s=5)
        await node.wait_stopped()
        assert not node.started
        with pytest.raises(ExceptionGroup) as failure:
            await node.aclose()
        assert failure.group_contains(OSError)
