"""``phalanx node`` under cProfile for a chosen window only, for ``bench_cluster.py``.

``python -m cProfile`` profiles a process from start to exit, so start-up (imports,
election, filling the keyspace) and shutdown would swamp the few seconds of load. This
wrapper runs the same ``phalanx`` command line with a profiler that is off until SIGUSR1
and is stopped and written to the file named first on the command line at SIGUSR2:

``python benchmarks/cluster_profiled_node.py OUT.prof node --id 1 ...``

Only the main thread (the event loop) is profiled; the worker threads that run the fsyncs
are not. ``--clock cpu`` (before OUT.prof) times with the thread's CPU clock instead of the
wall clock, so that time spent preempted by other processes is not charged to whatever
function was running.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType

__all__ = ["main"]


def main() -> None:
    args = sys.argv[1:]
    cpu_clock = args[:2] == ["--clock", "cpu"]
    if args[:1] == ["--clock"]:
        args = args[2:]
    out = args[0]
    profiler = cProfile.Profile(time.thread_time) if cpu_clock else cProfile.Profile()

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["phalanx", *args[1:]]
    from phalanx.cli.main import main as phalanx_main

    phalanx_main()


if __name__ == "__main__":
    main()
