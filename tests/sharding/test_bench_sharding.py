"""The sharding benchmark keeps working (its numbers are not checked: no timing in tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sharding_quick_run_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\nother section\n")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_sharding.py"),
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
    assert "other section" in text
    assert "## Sharding" in text
    for name in ("range", "jump", "rendezvous", "directory", "uhashring"):
        assert f"| {name} | 10 |" in text
