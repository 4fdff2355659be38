"""Raft consensus as a pure state machine (no I/O, no clock, no global RNG).

See ``docs/raft.md`` for the ``Ready`` contract and the features, each with the section of the
Raft paper or thesis it follows.
"""
