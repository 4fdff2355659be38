"""The Kubernetes example and the docs carry the guide's three probes, and the app serves them.

PyYAML is not a dependency, so the manifest is checked as text with a tiny indentation
reader that is enough for the probe blocks.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx

from phalanx.health import DEFAULT_PATHS, DEFAULT_PORT, HealthApp, HealthRegistry, Probe

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "docs" / "kubernetes" / "deployment.yaml"
DOC = ROOT / "docs" / "health.md"

# The three blocks of the guide's "Health Checks" section, verbatim.
GUIDE_BLOCKS = {
    "livenessProbe": """\
livenessProbe:
  httpGet:
    path: /healthz
    port: 8080
  initialDelaySeconds: 30
  periodSeconds: 10
""",
    "readinessProbe": """\
readinessProbe:
  httpGet:
    path: /ready
    port: 8080
  initialDelaySeconds: 5
  periodSeconds: 5
""",
    "startupProbe": """\
startupProbe:
  httpGet:
    path: /startup
    port: 8080
  failureThreshold: 30
  periodSeconds: 10
""",
}

EXPECTED = {
    "livenessProbe": {
        "httpGet.path": "/healthz",
        "httpGet.port": "8080",
        "initialDelaySeconds": "30",
        "periodSeconds": "10",
    },
    "readinessProbe": {
        "httpGet.path": "/ready",
        "httpGet.port": "8080",
        "initialDelaySeconds": "5",
        "periodSeconds": "5",
    },
    "startupProbe": {
        "httpGet.path": "/startup",
        "httpGet.port": "8080",
        "failureThreshold": "30",
        "periodSeconds": "10",
    },
}
PROBE_OF_KEY = {
    "livenessProbe": Probe.LIVENESS,
    "readinessProbe": Probe.READINESS,
    "startupProbe": Probe.STARTUP,
}


def block(text: str, key: str) -> str:
    """The lines of the mapping under ``key:`` (the key's line included), dedented."""
    lines = text.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.strip() == f"{key}:"]
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (len(lines[end]) - len(lines[end].lstrip())) > indent:
        end += 1
    return textwrap.dedent("\n".join(lines[start:end])) + "\n"


def leaves(block_text: str) -> dict[str, str]:
    """Flatten ``a:\\n  b: v`` into ``{"a.b": "v"}``, dropping the block's own key."""
    flat: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in block_text.splitlines()[1:]:
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if value.strip():
            flat[".".join([*(k for _, k in stack), key])] = value.strip().strip('"')
        else:
            stack.append((indent, key))
    return flat


def test_manifest_probes_are_exactly_the_guides() -> None:
    text = MANIFEST.read_text()
    for key, guide in GUIDE_BLOCKS.items():
        assert block(text, key) == guide
        assert leaves(block(text, key)) == EXPECTED[key]


def test_manifest_runs_the_health_server_on_the_probed_port() -> None:
    text = MANIFEST.read_text()
    assert "kind: Deployment" in text
    # The health container's command (the init container's comes first).
    commands = [line for line in text.splitlines() if line.strip() == "command:"]
    assert len(commands) == 2
    health_block = text[text.index("- name: health") :]
    command = [
        line.strip().removeprefix("- ").strip('"')
        for line in block(health_block, "command").splitlines()[1:]
    ]
    assert command[:3] == ["phalanx", "health", "serve"]
    assert command[command.index("--port") + 1] == str(DEFAULT_PORT)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert f"containerPort: {DEFAULT_PORT}" in health_block


def test_manifest_paths_are_the_ones_the_app_serves() -> None:
    text = MANIFEST.read_text()
    for key, probe in PROBE_OF_KEY.items():
        assert leaves(block(text, key))["httpGet.path"] == DEFAULT_PATHS[probe]
        assert leaves(block(text, key))["httpGet.port"] == str(DEFAULT_PORT)


async def test_each_manifest_path_answers_its_probe() -> None:
    text = MANIFEST.read_text()
    transport = httpx.ASGITransport(app=HealthApp(HealthRegistry()))
    async with httpx.AsyncClient(transport=transport, base_url="http://pod") as http:
        for key, probe in PROBE_OF_KEY.items():
            response = await http.get(leaves(block(text, key))["httpGet.path"])
            assert response.status_code == 200
            assert response.json()["probe"] == probe.value


def test_docs_reproduce_the_guides_blocks() -> None:
    doc = DOC.read_text()
    for guide in GUIDE_BLOCKS.values():
        assert f"```yaml\n{guide}```" in doc
    assert "docs/kubernetes/deployment.yaml" in doc or "kubernetes/deployment.yaml" in doc
