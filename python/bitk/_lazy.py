"""Lazy package exports: names that load their module on first use.

A package whose modules need torch (or other heavy imports) re-exports their names lazily, so that
importing the package, or one of its torch-free modules, stays cheap:

    __getattr__, __dir__ = lazy_exports(__name__, {"CausalLM": "model", "load_model": "hf"})

Each key is a name of the package; its value is the submodule (relative to the package) that
defines it, or "" for a submodule of that name itself.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` that resolve ``names`` on first access."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        where = names[name]
        if not where:
            return importlib.import_module(f"{package}.{name}")
        return getattr(importlib.import_module(f"{package}.{where}"), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
