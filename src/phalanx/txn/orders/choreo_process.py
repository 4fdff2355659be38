"""One service of the choreographed order flow as its own process, over Redis Streams.

``python -m phalanx.txn.orders.choreo_process SERVICE DIRECTORY REDIS_URL PREFIX FAULTS``
runs ``SERVICE``'s reactions: it reads the ``order`` stream as consumer group ``SERVICE``,
hands each event to its handlers through its inbox (duplicates skipped), and relays its
outbox to the stream, until SIGTERM. An event whose handling fails stays pending in the
group and is read again; a SIGKILL loses nothing that was acknowledged.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Final

import redis

from phalanx.txn.events import RedisStreamsBus
from phalanx.txn.orders.choreographed import Choreography
from phalanx.txn.orders.services import Faults, Shop

#: How long one read waits for new events.
BLOCK_MS: Final = 50


def main() -> None:
    service, directory, redis_url, prefix, faults_json = sys.argv[1:6]
    payment, inventory, shipping, seed = json.loads(faults_json)
    faults = Faults(payment=payment, inventory=inventory, shipping=shipping, seed=seed)
    stopping = {"now": False}

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    bus = RedisStreamsBus(client, prefix=prefix)
    shop = Shop(Path(directory), faults)
    flow = Choreography(shop, now_s=time.time, services=[service], publisher=bus)
    try:
        while not stopping["now"]:
            try:
                bus.consume("order", service, service, flow.bus.publish, block_ms=BLOCK_MS)
            except Exception:  # noqa: S112 - the entry stays pending and is read again
                continue
            for relay in flow.relays:
                relay.run_once()
    finally:
        shop.close()
        client.close()


if __name__ == "__main__":
    main()
