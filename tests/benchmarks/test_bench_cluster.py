"""The cluster benchmark keeps working on a tiny load (its numbers are not checked here)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cluster_quick_phalanx_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\nOther sections stay as they are.\n")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_cluster.py"),
            "--quick",
            "--systems",
            "phalanx-fsync",
            "--levels",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--keyspace",
            "20",
            "--procs",
            "1",
            "--tick-ms",
            "20",
            "--no-profile",
            "--write",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = out.read_text()
    assert "Other sections stay as they are." in text
    assert "## Cluster: Phalanx vs etcd vs PySyncObj" in text
    assert "| Phalanx, fsync | write | 2 |" in text
    assert "| Phalanx, fsync | read (linearizable) | 2 |" in text
