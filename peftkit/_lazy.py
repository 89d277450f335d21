"""Lazy public names for packages: ``import peftkit`` stays cheap until a name is used.

peftkit's public functions live in modules that import torch, transformers and peft (with
bitsandbytes behind it: several seconds). A package ``__init__`` that imports them all makes
``peftkit --help`` as slow as a training run's start. :func:`install` instead resolves each public
name on first access (PEP 562 module ``__getattr__``) and caches it in the package namespace;
subpackages (``peftkit.quantization``, ...) are imported on first access the same way.

Three public functions share their names with submodules (``peftkit.wrap``, ``peftkit.summary``,
and ``peftkit.methods``, the built-in methods package). When such a submodule is first imported,
the import system binds it on the package (``setattr(peftkit, "wrap", <module>)``), which would
hide the function. The package's module class therefore refuses to let a submodule replace an
exported name; the submodule itself stays importable through ``sys.modules`` as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


class _ExportingModule(types.ModuleType):
    """A package module whose exported names are never replaced by same-named submodules."""

    _peftkit_exports: Mapping[str, str] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in self._peftkit_exports:
            return  # the exported object is (or will be) resolved by the package's __getattr__
        super().__setattr__(name, value)


def install(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Make the public names of ``package`` load on first access.

    Args:
        package: The package's ``__name__`` (already in ``sys.modules``, i.e. called from its ``__init__``).
        exports: Public name -> module that defines it.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package namespace.

    Example:
        >>> __getattr__, __dir__ = install(__name__, {"wrap": "peftkit.wrap"})  # doctest: +SKIP

    """
    module = sys.modules[package]
    module.__class__ = _ExportingModule
    module._peftkit_exports = dict(exports)

    def __getattr__(name: str) -> Any:
        source = exports.get(name)
        if source is None:  # a submodule, as if the package had imported it (peftkit.quantization...)
            if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")  # the import binds it on the package
        value = getattr(importlib.import_module(source), name)
        module.__dict__[name] = value  # cached: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(exports))

    return __getattr__, __dir__
