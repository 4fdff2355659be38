"""The checker benchmark keeps working (its numbers are not checked: no timing in tests)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_checker.py"


def test_bench_checker_quick_run_rewrites_only_its_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--write", str(out)],
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
    # Writing again replaces the section instead of adding one.
    spec = importlib.util.spec_from_file_location("bench_checker_under_test", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    bench.write_markdown(out, "## History checkers\n\nagain")
    again = out.read_text()
    assert again.count("## History checkers") == 1
    assert "again" in again
    assert "## Other\n\nkept\n" in again
