"""Distributed transactions: two-phase commit across databases.

:mod:`phalanx.txn.twopc` holds the protocol (sans-I/O coordinator and participant state
machines), the durable decision log, the participants (PostgreSQL, SQLite, in-memory), the
coordinator driver and the recovery that finishes in-doubt transactions. See ``docs/txn.md``.
"""
