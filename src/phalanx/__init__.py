"""Phalanx: a toolkit for reliable, scalable distributed systems.

The package is layered; see ``docs/architecture.md``. Every layer may import
:mod:`phalanx.clock` and :mod:`phalanx.errors`; nothing else is shared implicitly.
"""

__version__ = "0.1.0"
