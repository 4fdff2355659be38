"""Load the hand-driven network helper under a name the test modules import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "phalanx_tests_raft_harness"

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("harness.py"))
    assert _spec is not None
    assert _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
