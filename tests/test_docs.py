"""The docs' code runs, the site's navigation reaches every page, and what a newcomer reads
first holds up: the README's links work on PyPI, code fits the content column, and an example
that cannot run as it stands says that it is a sketch.

A ```python block marked ``<!-- test -->`` runs as the body of an async function against a local
server standing in for ``https://api.example.com``. A block marked ``<!-- test: pytest -->`` is a
whole test module: it is written to a temporary directory and run by pytest in a subprocess,
as a reader would run it.

Each check is a function of the text it checks, and is shown failing on a bad sample too, so
that a check that cannot fail would be noticed.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import httpx_resilience
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
    pages = {path.name for path in DOCS.glob("*.md")}
    missing = pages_missing_from_nav((ROOT / "mkdocs.yml").read_text(), pages)
    assert not missing, f"pages missing from the nav in mkdocs.yml: {missing}"


def pages_missing_from_nav(mkdocs_yml: str, pages: set[str]) -> list[str]:
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", mkdocs_yml, re.MULTILINE))
    return sorted(pages - listed)


# --- what a newcomer reads first ----------------------------------------------------------

#: The widest code line in the docs: wider ones overflow the content column at 1,400 px.
CODE_WIDTH = 88
README = ROOT / "README.md"
# [text](target), [text]: target, and HTML href=/src= attributes.
_LINK = re.compile(
    r"\]\(\s*<?([^)\s>]+)|^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$|\b(?:href|src)=[\"']([^\"']+)",
    re.MULTILINE,
)
_ABSOLUTE = ("https://", "http://", "mailto:")


def relative_links(markdown: str) -> list[str]:
    """Link targets that are not absolute URLs: they break where the README is shown outside
    the repository (PyPI), anchors (``#...``) included."""
    targets = [
        next(group for group in match.groups() if group) for match in _LINK.finditer(markdown)
    ]
    return [target for target in targets if not target.startswith(_ABSOLUTE)]


def test_readme_links_are_absolute() -> None:
    text = README.read_text()
    assert len(re.findall(r"\]\(https://", text)) >= 10  # the links were found at all
    assert relative_links(text) == []


def test_relative_links_are_found() -> None:
    sample = (
        "See [HTTP/2](docs/http2.md), [up](#install), [ok](https://example.org/x),\n"
        "[ref]: CHANGELOG.md\n"
        '<img src="docs/chart.svg"> <a href="https://example.org/">ok</a>\n'
    )
    assert relative_links(sample) == ["docs/http2.md", "#install", "CHANGELOG.md", "docs/chart.svg"]


def code_lines(markdown: str, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line number, text) of every line shown as code: fenced blocks, with the files that
    ``--8<--`` snippets include expanded, and indented blocks."""
    lines = markdown.splitlines()
    found: list[tuple[int, str]] = []
    fence: str | None = None
    previous_blank = True
    indented = False
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            elif line.strip().startswith("--8<--"):
                found += [(number, text) for text in _snippet(line.strip(), root)]
            else:
                found.append((number, line))
            continue
        opening = re.match(r"\s*(```+|~~~+)", line)
        if opening:
            fence = opening.group(1)
        elif line.startswith("    ") and (previous_blank or indented) and line.strip():
            indented = True
            found.append((number, line[4:]))
        elif line.strip():
            indented = False
        previous_blank = not line.strip()
    return found


def _snippet(include: str, root: Path) -> list[str]:
    """The lines a ``--8<-- "path:section"`` line includes (pymdownx.snippets)."""
    target = include.removeprefix("--8<--").strip().strip("\"'")
    path, _, section = target.partition(":")
    text = (root / path).read_text().splitlines()
    if not section:
        return text
    start = next(i for i, line in enumerate(text) if f"--8<-- [start:{section}]" in line)
    end = next(i for i, line in enumerate(text) if f"--8<-- [end:{section}]" in line)
    return text[start + 1 : end]


def wide_code_lines(markdown: str, root: Path = ROOT) -> list[str]:
    return [
        f"line {number}: {len(text)} columns"
        for number, text in code_lines(markdown, root)
        if len(text) > CODE_WIDTH
    ]


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda page: page.stem)
def test_docs_code_fits_the_content_column(page: Path) -> None:
    assert wide_code_lines(page.read_text()) == []


def test_wide_code_lines_are_found(tmp_path: Path) -> None:
    wide = "x" * (CODE_WIDTH + 1)
    (tmp_path / "example.py").write_text(f"# --8<-- [start:part]\n{wide}\n# --8<-- [end:part]\n")
    sample = (
        f"Text wider than code may be: {wide}\n\n```python\nok = 1\n{wide}\n```\n\n"
        f"    {wide}\n\n"
        '```python\n--8<-- "example.py:part"\n```\n'
    )
    assert wide_code_lines(sample, tmp_path) == [
        f"line 5: {CODE_WIDTH + 1} columns",
        f"line 8: {CODE_WIDTH + 1} columns",
        f"line 11: {CODE_WIDTH + 1} columns",
    ]


_PYTHON = re.compile(r"(<!-- test: pytest -->\n)?```python\n(.*?)```", re.DOTALL)


def unmarked_sketches(markdown: str) -> list[str]:
    """The first line of each ```python block that a reader cannot run as it stands (top-level
    ``await``, a made-up ``example.com`` host, not a whole program) and that does not begin by
    saying ``# Sketch``. Whole test modules and blocks included from examples/ run as they are."""
    found = []
    for pytest_module, code in _PYTHON.findall(markdown):
        if pytest_module or code.startswith(("# Sketch", "--8<--")):
            continue
        try:
            compile(code, "<docs>", "exec")
            runs = "example.com" not in code
        except SyntaxError:
            runs = False
        if not runs:
            found.append(code.splitlines()[0] if code.strip() else "(empty)")
    return found


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda page: page.stem)
def test_examples_run_as_they_stand_or_say_they_are_sketches(page: Path) -> None:
    assert unmarked_sketches(page.read_text()) == []


def test_unmarked_sketches_are_found() -> None:
    sample = (
        "```python\nimport httpx\nresponse = await client.get('/')\n```\n"
        "```python\n# Sketch: example.com stands for your API.\nhttpx.get('https://api.example.com')\n```\n"
        "```python\nprint('runs')\n```\n"
        "```python\nurl = 'https://api.example.com/'\n```\n"
        "<!-- test: pytest -->\n```python\nasync def test(): await x\n```\n"
    )
    assert unmarked_sketches(sample) == ["import httpx", "url = 'https://api.example.com/'"]


def test_pages_missing_from_the_nav_are_found() -> None:
    nav = "nav:\n  - Home: index.md\n  - Guide:\n      - Retries: retries.md\n"
    assert pages_missing_from_nav(nav, {"index.md", "retries.md", "new.md"}) == ["new.md"]


def test_readme_example_runs_against_a_local_server(
    h1_server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's sketch is a whole program: with its made-up host pointed at a local
    server, it runs as it stands."""
    [code] = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert code.startswith("# Sketch:")
    assert code.rstrip().endswith("asyncio.run(main())")
    monkeypatch.setenv("API_TOKEN", "t0ken")
    source = code.replace("https://api.example.com", h1_server.url)
    module = types.ModuleType("readme_example")
    exec(compile(source, str(README), "exec"), module.__dict__)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[(200, None, 'final response')]", "{'id': 1, 'name': 'Ada Lovelace'}"]


# --- the API reference (mkdocstrings renders these signatures and Args sections) ----------


@pytest.mark.parametrize(
    "cls",
    [
        httpx_resilience.ResilientTransport,
        httpx_resilience.AsyncConnectionPoolTransport,
        httpx_resilience.AsyncAPIClient,
        httpx_resilience.RetryConfig,
        httpx_resilience.CircuitBreaker,
    ],
    ids=lambda cls: cls.__name__,
)
def test_the_reference_documents_every_parameter(cls: type) -> None:
    parameters = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    assert undocumented(inspect.getdoc(cls) or "", parameters) == []
    # A default the reader sees in the signature names nothing private (``_random.random``).
    for default in signature_defaults(cls):
        names = re.findall(r"[A-Za-z_][\w.]*", default)
        assert not [n for n in names if any(p.startswith("_") for p in n.split("."))], default


def signature_defaults(cls: type) -> list[str]:
    """The source text of the defaults in ``cls``'s signature: its ``__init__``'s, or a
    dataclass's field defaults."""
    [node] = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    assert isinstance(node, ast.ClassDef)
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            defaults = [*item.args.defaults, *item.args.kw_defaults]
            return [ast.unparse(d) for d in defaults if d is not None]
    return [ast.unparse(i.value) for i in node.body if isinstance(i, ast.AnnAssign) and i.value]


def undocumented(docstring: str, parameters: list[str]) -> list[str]:
    """``parameters`` that the docstring's ``Args:`` (or ``Attributes:``) section omits."""
    section = re.search(r"^(?:Args|Attributes):\n(.*?)(?=\n\S|\Z)", docstring, re.S | re.M)
    listed = (
        set(re.findall(r"^    (\w+)(?: \([^)]*\))?:", section.group(1), re.M)) if section else set()
    )
    return [name for name in parameters if name not in listed]


def test_undocumented_parameters_are_found() -> None:
    docstring = "Summary.\n\nArgs:\n    retry: The policy.\n    clock: For tests.\n"
    assert undocumented(docstring, ["retry", "verify", "clock"]) == ["verify"]


# --- the performance page's chart ---------------------------------------------------------


def _chart_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("_chart", ROOT / "benchmarks" / "_chart.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_performance_chart_and_its_table_show_one_run() -> None:
    chart = _chart_module()
    page = (DOCS / "performance.md").read_text()
    [image] = re.findall(r"!\[[^\]]*\]\((images/[\w-]+\.svg)\)", page)
    svg = (DOCS / image).read_text()
    data = chart.read_chart_data(svg)
    # Written by benchmarks/_chart.py from the data it embeds, not edited by hand.
    assert svg == chart.render_svg(data["title"], data["series"], note=data["note"])
    assert svg.count('class="series"') == len(data["series"]) >= 2
    # The table beside it shows the same numbers: one row per client, the same columns.
    levels = sorted({level for points in data["series"].values() for level, _ in points})
    header = "| client | " + " | ".join(f"concurrency {level}" for level in levels) + " |"
    assert header in page
    for client, points in data["series"].items():
        cells = " | ".join(f"{value:,.0f}" for _, value in sorted(points))
        assert f"| {client} | {cells} |" in page, f"the table's {client!r} row is not the chart's"


def test_a_chart_is_drawn_from_its_data() -> None:
    chart = _chart_module()
    series = {"plain": [(1, 1000.0), (10, 700.0)], "resilient": [(1, 990.0), (10, 910.0)]}
    svg = chart.render_svg("req/s", series, note="one run")
    assert chart.read_chart_data(svg) == {"title": "req/s", "note": "one run", "series": series}
    assert svg.count("<polyline") == 2
    assert "plain: 1,000 at 1, 700 at 10" in svg  # the description for screen readers
    assert ">1,000<" in svg  # the y axis runs to a round 1,000
    assert svg != chart.render_svg("req/s", {**series, "plain": [(1, 1000.0), (10, 701.0)]})


@pytest.mark.parametrize(
    ("page", "kind"),
    [
        ("circuit-breaking.md", "stateDiagram-v2"),
        ("retries.md", "flowchart TD"),
        ("transport.md", "sequenceDiagram"),
        ("architecture.md", "flowchart TB"),
    ],
)
def test_the_diagrams_are_mermaid_the_site_draws(page: str, kind: str) -> None:
    """The breaker's states, the retry decision and a request's path are drawn by the site
    (mkdocs-material renders ```mermaid blocks that pymdownx.superfences passes through);
    offline, a reader sees their source."""
    assert f"```mermaid\n{kind}\n" in (DOCS / page).read_text()
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"custom_fences:\n\s+- name: mermaid\n\s+class: mermaid\n", config)
