"""The public surface: everything public is exported through __all__, and only that."""

from __future__ import annotations

import importlib
import pkgutil

import httpx_resilience


def test_all_is_sorted_and_complete() -> None:
    exported = httpx_resilience.__all__
    # isort style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    public = {name for name in vars(httpx_resilience) if not name.startswith("_")}
    modules = {m.name for m in pkgutil.iter_modules(httpx_resilience.__path__)}
    assert public - modules - {"annotations"} == set(exported) - {"__version__"}


def test_private_modules_only() -> None:
    for module in pkgutil.iter_modules(httpx_resilience.__path__):
        assert module.name.startswith("_"), module.name
        importlib.import_module(f"httpx_resilience.{module.name}")


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("httpx_resilience").joinpath("py.typed").is_file()
