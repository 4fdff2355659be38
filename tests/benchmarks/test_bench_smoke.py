"""The benchmark script keeps working (its numbers are not checked here: no timing in tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_resilience_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text(
        "# Benchmarks\n\n<!-- bench_resilience:start -->\n<!-- bench_resilience:end -->\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_resilience.py"),
            "--quick",
            "--write",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "pybreaker" in text
    assert "| case | phalanx ns |" in text
