"""The docs' code runs, and the site's navigation reaches every page.

A ```python block marked ``<!-- test -->`` runs as the body of an async function against a local
server standing in for ``https://api.example.com``. A block marked ``<!-- test: pytest -->`` is a
whole test module: it is written to a temporary directory and run by pytest in a subprocess,
as a reader would run it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerThread

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"<!-- test -->\n```python\n(.*?)```", re.DOTALL)
PYTEST_BLOCK = re.compile(r"<!-- test: pytest -->\n```python\n(.*?)```", re.DOTALL)


def marked_blocks(pattern: re.Pattern[str] = BLOCK) -> list[Any]:
    params = []
    for page in sorted(DOCS.glob("*.md")):
        for number, code in enumerate(pattern.findall(page.read_text()), 1):
            params.append(pytest.param(code, id=f"{page.stem}-{number}"))
    return params


@pytest.mark.anyio
@pytest.mark.parametrize("code", marked_blocks())
async def test_doc_example(code: str, h1_server: ServerThread) -> None:
    code = code.replace("https://api.example.com", h1_server.url)
    imports, body = _split_imports(code)
    source = f"{imports}\n\nasync def __example() -> None:\n{textwrap.indent(body, '    ')}\n"
    module = types.ModuleType("doc_example")  # dataclasses look their module up in sys.modules
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "<docs example>", "exec"), module.__dict__)
        await module.__dict__["__example"]()
    finally:
        del sys.modules[module.__name__]


def _split_imports(code: str) -> tuple[str, str]:
    """The block's top-level imports (however many lines each spans), and the rest."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, "<docs example>", "exec", flags=flags)
    hoisted: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            hoisted.update(range(node.lineno - 1, node.end_lineno or node.lineno))
    lines = code.splitlines()
    imports = [line for number, line in enumerate(lines) if number in hoisted]
    body = [line for number, line in enumerate(lines) if number not in hoisted]
    return "\n".join(imports), "\n".join(body)


@pytest.mark.parametrize("code", marked_blocks(PYTEST_BLOCK))
def test_doc_test_module(code: str, tmp_path: Path) -> None:
    (tmp_path / "test_from_docs.py").write_text(code)
    # An empty ini file makes tmp_path the rootdir, so this project's conftest and settings
    # stay out of it; warnings are errors, as in this project's own suite.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        # Without pytest-asyncio (installed for this project, not necessarily for a reader).
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:asyncio"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout


def test_every_page_with_examples_is_covered() -> None:
    assert len(marked_blocks()) >= 3
    assert len(marked_blocks(PYTEST_BLOCK)) >= 1


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {path.name for path in DOCS.glob("*.md")}
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, re.MULTILINE))
    assert pages <= listed, f"pages missing from the nav in mkdocs.yml: {sorted(pages - listed)}"
