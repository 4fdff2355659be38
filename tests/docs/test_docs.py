"""The documentation's code is real: every Python block compiles, the README tour runs."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_RE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks(page: Path) -> list[str]:
    return BLOCK_RE.findall(page.read_text())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile(page: Path) -> None:
    for index, block in enumerate(blocks(page)):
        # Top-level ``await`` is allowed, as in an asyncio REPL.
        compile(block, f"{page.name}[{index}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_readme_tour_runs() -> None:
    namespace: dict[str, object] = {}
    exec(blocks(ROOT / "README.md")[0], namespace)
    assert callable(namespace["reserve"])


def test_readme_links_exist() -> None:
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        assert (ROOT / target).exists(), target
