"""The checker benchmark keeps working (its numbers are not checked: no timing in tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_checker_quick_run_rewrites_only_its_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_checker.py"),
            "--quick",
            "--write",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "## Other\n\nkept\n" in text
    assert "## History checkers" in text
    assert "| jepsen-etcd (register) | 5 | 5/5 |" in text
    first = text
    rerun = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_checker.py"),
            "--quick",
            "--write",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_text().count("## History checkers") == 1
    assert len(out.read_text().splitlines()) == len(first.splitlines())
