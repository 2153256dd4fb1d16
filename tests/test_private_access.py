"""No module of the package reaches into another module's private names.

``obj._name`` (``obj`` not ``self`` or ``cls``) is allowed only where the module doing it also
defines ``_name`` (a function, class or method of that name, an attribute it assigns, a slot it
declares): the same class's internals, within the file that owns them. What another module
needs gets a name without the underscore (public to the package; it need not be exported).
The check reads the source (`ast`); defining the same private name in two modules would
hide a crossing from it, so it is a guard, not a proof.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "httpx_resilience"

#: Private by name only: the documented API of named tuples.
NAMEDTUPLE_API = {"_asdict", "_field_defaults", "_fields", "_make", "_replace"}

#: Another library's private names, read on purpose (module, expression): why.
OUTSIDE = {
    ("_connection/http2.py", "e._events"): (
        "h2's StreamClosedError, in h2's own `_receive_frame` body, copied as it is "
        "(tests/test_h2_machine.py compares it with the installed h2's)"
    ),
}


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.Name,)) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries (and any other string: lenient)
    return names


def crossings(path: Path) -> list[str]:
    """``line: expression`` of each private attribute ``path`` reads from outside (`OUTSIDE`
    aside)."""
    module = str(path.relative_to(PACKAGE)) if path.is_relative_to(PACKAGE) else path.name
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = _defined(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if name in defined or name in NAMEDTUPLE_API:
            continue
        expression = ast.unparse(node)
        if (module, expression) not in OUTSIDE:
            found.append(f"{node.lineno}: {expression}")
    return found


def test_no_module_reads_another_modules_private_names() -> None:
    found = {
        str(path.relative_to(PACKAGE)): crossings(path) for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert {module: lines for module, lines in found.items() if lines} == {}


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "class A:\n"
        "    __slots__ = ('_mine',)\n"
        "    def f(self, other, row):\n"
        "        self._own = other._mine\n"
        "        return other._theirs, row._replace(), self._x.y\n"
    )
    assert crossings(module) == ["5: other._theirs"]
