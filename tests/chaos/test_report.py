"""The chaos report page (:mod:`phalanx.chaos.report`): self-contained, deterministic, and
written whether or not matplotlib is installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest

from phalanx.chaos.check import check_history
from phalanx.chaos.history import Operation
from phalanx.chaos.nemesis import NEMESIS_PROCESS
from phalanx.chaos.report import render_report, write_report
from phalanx.chaos.runner import RunOptions, RunResult
from phalanx.errors import Outcome

SVG_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def _op(op_id: int, process: int, f: str, start_s: float, end_s: float, **fields: Any) -> Operation:
    return Operation(
        id=op_id,
        process=process,
        f=f,
        invoke_us=round(start_s * 1e6),
        complete_us=round(end_s * 1e6),
        outcome=fields.pop("outcome", Outcome.OK),
        **fields,
    )


def _ops() -> list[Operation]:
    ops = []
    for k in range(60):
        at_s = 0.1 * k
        if k % 2:
            ops.append(_op(k, k % 3, "read", at_s, at_s + 0.002, key="r0", output=k - 1))
        else:
            ops.append(_op(k, k % 3, "write", at_s, at_s + 0.003, key="r0", input=k))
    return ops


FAULTS = [
    _op(0, NEMESIS_PROCESS, "start-partition", 1.0, 1.1, input="partition <leader>"),
    _op(1, NEMESIS_PROCESS, "stop-partition", 2.0, 2.1, input="partition <leader>"),
    _op(2, NEMESIS_PROCESS, "start-kill", 3.0, 3.1, input="kill 2"),
    _op(3, NEMESIS_PROCESS, "stop-kill", 4.0, 4.1, input="kill 2"),
    _op(4, NEMESIS_PROCESS, "heal", 5.5, 5.6),
]


def _result(ops: list[Operation]) -> RunResult:
    checked = check_history(ops, "register")
    return RunResult(
        verdict=checked.verdict,
        options=RunOptions(),
        command=RunOptions().command(Path("out")),
        checker=checked,
        counts={"operations": len(ops)},
        faults=[],
        nemesis_applied=2,
        nemesis_failed=0,
        duration_s=6.0,
        check_s=0.01,
        out="out",
    )


def _page(ops: list[Operation]) -> str:
    return render_report(_result(ops), ops, FAULTS, {})


def test_the_page_inlines_its_plots_and_fetches_nothing() -> None:
    pytest.importorskip("matplotlib")
    page = _page(_ops())
    assert "<span class='valid'>VALID</span>" in page
    assert "<script" not in page
    assert "<?xml" not in page
    assert "<!DOCTYPE svg" not in page
    assert set(re.findall(r"https?://[^\"' <>]+", page)) <= SVG_NAMESPACES
    svgs = re.findall(r"<svg .*?</svg>", page, re.DOTALL)
    assert len(svgs) == 4  # faults, latency, latency quantiles, throughput
    for svg in svgs:
        xml.dom.minidom.parseString(svg)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    assert ">partition<" in page  # the fault kinds' legend
    assert ">kill<" in page
    assert "partition &lt;leader&gt;" in page  # a lane's label, escaped


def test_an_info_operation_changes_the_page() -> None:
    pytest.importorskip("matplotlib")
    ops = _ops()
    before = _page(ops)
    ops[10] = _op(10, 1, "write", 1.0, 1.4, key="r0", input=10, outcome=Outcome.INDETERMINATE)
    assert _page(ops) != before


def test_the_same_run_writes_the_same_bytes() -> None:
    pytest.importorskip("matplotlib")
    assert _page(_ops()) == _page(_ops())
    # And in fresh processes with different hash seeds (no ids from random or from id()).
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_report as t; "
        "sys.stdout.write(t._page(t._ops()))"
    )
    pages = [
        subprocess.run(
            [sys.executable, "-c", script, str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert pages[0] == pages[1] == _page(_ops())


def test_without_matplotlib_the_page_says_how_to_get_the_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    write_report(tmp_path / "index.html", _result(_ops()), _ops(), FAULTS, {})
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<svg" not in page
    assert "pip install 'phalanx[chaos]'" in page
    assert "<span class='valid'>VALID</span>" in page
    assert "partition &lt;leader&gt;" in page  # the nemesis operations are still listed
