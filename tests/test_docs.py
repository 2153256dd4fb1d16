"""The code blocks the docs mark with ``<!-- test -->`` run against a local server."""

from __future__ import annotations

import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerThread

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"<!-- test -->\n```python\n(.*?)```", re.DOTALL)


def marked_blocks() -> list[Any]:
    params = []
    for page in sorted(DOCS.glob("*.md")):
        for number, code in enumerate(BLOCK.findall(page.read_text()), 1):
            params.append(pytest.param(code, id=f"{page.stem}-{number}"))
    return params


@pytest.mark.anyio
@pytest.mark.parametrize("code", marked_blocks())
async def test_doc_example(code: str, h1_server: ServerThread) -> None:
    code = code.replace("https://api.example.com", h1_server.url)
    imports = "\n".join(line for line in code.splitlines() if line.startswith(("from ", "import ")))
    body = "\n".join(
        line for line in code.splitlines() if not line.startswith(("from ", "import "))
    )
    source = f"{imports}\n\nasync def __example() -> None:\n{textwrap.indent(body, '    ')}\n"
    module = types.ModuleType("doc_example")  # dataclasses look their module up in sys.modules
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "<docs example>", "exec"), module.__dict__)
        await module.__dict__["__example"]()
    finally:
        del sys.modules[module.__name__]


def test_every_page_with_examples_is_covered() -> None:
    assert len(marked_blocks()) >= 3
