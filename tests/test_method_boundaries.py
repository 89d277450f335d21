"""A method owns everything it knows: io/, merge/, training/ and config/ name no method.

They reach methods only through the contract in peftkit/registry.py (layout, interop, file hooks,
combine views, handles), so a new method is its own folder and nothing else. The scan parses the
code; it fails on

* a string equal to a method's ``peft_type`` (``"LORA"``, ``"ADALORA"``, ``"ADAPTER"``, ...);
* a string equal to a method name, or an identifier with one as a word (``lora_scale``,
  ``LoraOptions``), for the names that mean nothing else (``lora``, ``dora``, ``adalora``, ``ia3``,
  and the old ``bottleneck``);
* for the names that are also plain words here (``adapter``, ``parallel``, ``prefix``): a string
  compared with ``==`` / ``in`` (``if method == "adapter"``), or a dict keyed by two method names
  (a per-method table).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import peftkit
from peftkit import registry

PACKAGE = Path(peftkit.__file__).resolve().parent
GENERIC = ("io", "merge", "training", "config")
#: Method words that never mean anything else here.
DISTINCT = {"lora", "dora", "adalora", "ia3", "bottleneck"}


def method_names() -> tuple[set[str], set[str]]:
    """(method names, peft types) of the built-in methods."""
    specs = [peftkit.get_method(ep.name) for ep in registry.builtin_entry_points()]
    names = {spec.name for spec in specs} | {"bottleneck"}
    peft_types = {t for spec in specs for t in (spec.peft_type, *spec.legacy_peft_types)}
    return names, peft_types


def _words(identifier: str) -> set[str]:
    return {
        w.lower()
        for part in identifier.split("_")
        for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z0-9]+(?![a-z])", part)
    }


def _strings(node: ast.AST) -> list[ast.Constant]:
    nodes = [node] if isinstance(node, ast.Constant) else getattr(node, "elts", [])
    return [n for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def violations(source: str, names: set[str], peft_types: set[str]) -> list[tuple[int, str]]:
    """``(line, text)`` of every method name in ``source`` (see the module docstring)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and DISTINCT & _words(token.string):
            found.append((token.start[0], token.string))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in peft_types or node.value.lower() in DISTINCT:
                found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [
                    (c.lineno, repr(c.value)) for c in _strings(side) if c.value.lower() in names - DISTINCT
                ]
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            named = [k for k in keys if k.value.lower() in names]
            if len({k.value.lower() for k in named}) >= 2:
                found += [(k.lineno, repr(k.value)) for k in named]
    return sorted(set(found))


def test_the_scan_catches_method_names() -> None:
    names, peft_types = method_names()
    source = (
        'x = "lora"\n'
        "y = lora_scale(2)\n"
        'if t == "ADALORA" or method == "adapter":\n'
        '    z = {"adapter": "the directory", "parallel": False}\n'
        'label = {"adapter": "a directory"}\n'
        "class LoraThing: ...\n"
    )
    assert sorted({line for line, _ in violations(source, names, peft_types)}) == [1, 2, 3, 4, 6]


@pytest.mark.parametrize("package", GENERIC)
def test_generic_packages_name_no_method(package: str) -> None:
    names, peft_types = method_names()
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for line, text in violations(path.read_text(encoding="utf-8"), names, peft_types)
    ]
    assert not problems, "method knowledge outside peftkit/methods/:\n" + "\n".join(problems)


def test_builtin_methods_register_through_entry_points_like_plugins() -> None:
    folders = sorted(p.parent.name for p in (PACKAGE / "methods").glob("*/__init__.py"))
    entry_points = registry.builtin_entry_points()
    assert [ep.name for ep in entry_points] == folders  # a built-in method is one folder, found as such
    assert all(ep.value == f"peftkit.methods.{ep.name}:register" for ep in entry_points)
    assert set(peftkit.methods()) >= set(folders)


def test_the_library_core_does_not_depend_on_the_recipes_support_modules() -> None:
    """peftkit.data (CoNLL / sentiment / text readers, collation) and peftkit.metrics (seqeval scores)
    serve the recipes; wrap, methods, io, merge, training and quantization never import them."""
    support = ("peftkit.data", "peftkit.metrics")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "data" or relative.name == "metrics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == s or n.startswith(s + ".") for n in names for s in support):
                offenders.append(f"{relative}:{node.lineno}")
    assert not offenders, offenders
