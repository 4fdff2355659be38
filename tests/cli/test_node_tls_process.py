"""`phalanx node --tls-*`: a node process that serves clients over mutual TLS only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loopback import free_ports
from phalanx.client import Client
from phalanx.errors import Indeterminate, Timeout, Unavailable
from phalanx.net.tls import TlsFiles


def test_node_process_with_mutual_tls(tmp_path: Path, certs: Any) -> None:
    peer, client = free_ports(2)
    command = [
        sys.executable, "-c", "from phalanx.cli.main import main; main()", "node",
        "--id", "1", "--data-dir", str(tmp_path / "n1"),
        "--peer-listen", f"127.0.0.1:{peer}", "--client-listen", f"127.0.0.1:{client}",
        "--cluster", f"1=127.0.0.1:{peer}/127.0.0.1:{client}", "--tick-ms", "20",
        "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca),
        "--tls-mutual",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tls = TlsFiles(certs.cert, certs.key, certs.ca, mutual=True)
        with Client([f"127.0.0.1:{client}"], ssl=tls.client_context()) as secure:
            secure.put(b"k", b"v")
            assert secure.get(b"k") == b"v"
        # The command line takes its TLS files from the environment.
        env = {
            **os.environ,
            "PHALANX_ENDPOINTS": f"127.0.0.1:{client}",
            "PHALANX_TLS_CA": str(certs.ca),
            "PHALANX_TLS_CERT": str(certs.cert),
            "PHALANX_TLS_KEY": str(certs.key),
        }
        cli = [sys.executable, "-c", "from phalanx.cli.main import main; main()", "kv"]
        got = subprocess.run(
            [*cli, "get", "k"], env=env, capture_output=True, text=True, check=False
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == ["k", "v"]
        with (
            Client([f"127.0.0.1:{client}"], total_timeout_s=1) as plain,
            pytest.raises((Unavailable, Indeterminate, Timeout)),
        ):
            plain.get(b"k")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_tls_flags_must_come_together(tmp_path: Path) -> None:
    command = [
        sys.executable, "-c", "from phalanx.cli.main import main; main()", "node",
        "--id", "1", "--data-dir", str(tmp_path), "--peer-listen", "127.0.0.1:1",
        "--client-listen", "127.0.0.1:2", "--cluster", "1=127.0.0.1:1/127.0.0.1:2",
        "--tls-cert", "x.pem",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "TLS needs all of --tls-cert, --tls-key and --tls-ca" in result.stderr
