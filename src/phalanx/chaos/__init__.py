"""Chaos tooling: faults on real clusters, histories of client operations, and the checkers
that judge them.

=====================  ==========================================================================
module                 what it owns
=====================  ==========================================================================
``history``            :class:`Operation` records, the :class:`Recorder`, JSON-lines storage
``loaders``            readers of Jepsen/Knossos logs and EDN operation maps
``verdict``            the three-valued :class:`Verdict` and a checker's :class:`CheckResult`
``models``             small pure sequential specifications: register, key-value, lock
``linearizability``    the search of one partition (Wing & Gong, with Lowe's memoisation)
``partition``          P-compositionality: split by key, check partitions in worker processes
``report_html``        the self-contained HTML timeline of a violation
``bank``               the bank checker: constant total, no negative balance
``setcheck``           the set checker: lost, unexpected and stale elements
``lockcheck``          the lock checker: fencing tokens increase, holders never overlap
``monotonic``          monotonic reads per session
``check``              one entry point per model name, used by ``phalanx chaos check``
``generate``           seeded generators of histories, with planted anomalies
``cluster``            a local cluster of ``phalanx node`` processes for a run
``nemesis``            fault schedules from a seed and the faults themselves (processes, links,
                       toxics, clocks, membership)
``workloads``          register, kv, set, bank and lock workloads that record histories
``netns``              network namespaces and iptables partitions for ``--netns`` runs (root)
``toxics``             Toxiproxy's byte-stream toxics: specs, validation, what each does
``proxy_link``         one proxied TCP connection: two pipes through the toxics, half-closes
``proxy``              the userspace fault proxy: proxies, listeners, limits
``proxy_api``          the proxy's Toxiproxy-compatible HTTP API and its client ``ProxyAdmin``
``runner``             ``phalanx chaos run``: cluster, workload, nemesis, heal, check, report
``plots``              the report's matplotlib plots: faults, latency, quantiles, throughput
``report``             the run's HTML report: verdict, plots, logs, the command to reproduce
``summary``            tables of finished runs and campaigns (``phalanx chaos summary``)
=====================  ==========================================================================

See ``docs/chaos.md``.
"""
