"""Every tensor peftkit creates says on which device: a source scan that catches CPU-only bugs on a CPU machine.

A ``torch.eye(n)`` next to a CUDA tensor works on a CPU-only machine and fails on a GPU
(``Expected all tensors to be on the same device``): AdaLoRA's orthogonality regulariser did exactly
that. The scan parses every module of ``peftkit/`` (``ast``, so strings, comments and docstrings
never count) and requires a ``device=`` keyword on each call of a tensor constructor, however torch
was imported (``import torch``, ``import torch as t``, ``from torch import zeros``). ``*_like``
functions and ``tensor.new_*`` methods take the device of their argument and are fine. A tensor that
stays on the CPU on purpose (a mask applied to tensors read from a file) says ``device="cpu"``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "peftkit"

#: torch functions that create a tensor (or a generator) on a device they are told, else the CPU.
CONSTRUCTORS = frozenset(
    {
        "arange",
        "as_tensor",
        "empty",
        "empty_strided",
        "eye",
        "full",
        "Generator",
        "linspace",
        "logspace",
        "ones",
        "rand",
        "randint",
        "randn",
        "randperm",
        "range",
        "scalar_tensor",
        "sparse_coo_tensor",
        "tensor",
        "tril_indices",
        "triu_indices",
        "zeros",
    }
)


def _torch_names(tree: ast.AST) -> tuple[set[str], dict[str, str]]:
    """Names bound to the torch module, and local names bound to torch constructors (alias -> name)."""
    modules, functions = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch":
                    modules.add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            for alias in node.names:
                if alias.name in CONSTRUCTORS:
                    functions[alias.asname or alias.name] = alias.name
    return modules, functions


def constructor_calls_without_device(source: str, filename: str = "<source>") -> list[str]:
    """``"file:line: torch.name(...)"`` for each tensor-constructor call in ``source`` without ``device=``."""
    tree = ast.parse(source, filename=filename)
    modules, functions = _torch_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, name = node.func, None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in modules:
            name = func.attr if func.attr in CONSTRUCTORS else None
        elif isinstance(func, ast.Name):
            name = functions.get(func.id)
        if name is not None and not any(keyword.arg == "device" for keyword in node.keywords):
            found.append(f"{filename}:{node.lineno}: torch.{name}(...) without device=")
    return sorted(found, key=lambda line: (line.split(":")[0], int(line.split(":")[1])))


def test_every_tensor_constructor_in_peftkit_names_its_device() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40, f"the scan found only {len(files)} modules under {PACKAGE}"
    offenders = []
    for path in files:
        rel = path.relative_to(PACKAGE.parent).as_posix()
        offenders += constructor_calls_without_device(path.read_text(encoding="utf-8"), rel)
    assert not offenders, (
        "tensor constructors without device= (they land on the CPU even when the model is on a GPU): "
        "pass device=<the device of the tensors it meets> (or device='cpu' for a CPU-only tensor), or use "
        "torch.*_like / tensor.new_*:\n" + "\n".join(offenders)
    )


SNIPPET = '''
import torch
import torch as T
from torch import zeros as Z, ones
from torch import nn

def f(x, cov):
    """torch.eye(3) in a docstring is not code."""
    a = torch.eye(cov.shape[0], dtype=cov.dtype)                 # line 9: caught
    b = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    c = T.zeros(3)                                               # line 11: caught
    d = Z(2, 2)                                                  # line 12: caught
    e = ones(4, device=x.device)
    f = torch.zeros_like(x) + x.new_zeros(3) + x.new_tensor([1.0])
    g = torch.Generator().manual_seed(0)                         # line 15: caught
    h = torch.tensor(
        [1, 2],
        dtype=torch.long,
    )                                                            # line 16 (where the call starts): caught
    i = nn.Linear(2, 2)  # a module, not a tensor constructor; not scanned
    j = torch.randint(0, 5, (2,), generator=g, device="cpu")
    return torch.arange(5)                                       # line 22: caught
'''


def test_the_scan_names_file_and_line_of_each_constructor_without_device() -> None:
    found = constructor_calls_without_device(SNIPPET, "snippet.py")
    assert found == [
        "snippet.py:9: torch.eye(...) without device=",
        "snippet.py:11: torch.zeros(...) without device=",
        "snippet.py:12: torch.zeros(...) without device=",
        "snippet.py:15: torch.Generator(...) without device=",
        "snippet.py:16: torch.tensor(...) without device=",
        "snippet.py:22: torch.arange(...) without device=",
    ]


@pytest.mark.parametrize(
    ("source", "count"),
    [
        ("import torch\nx = torch.eye(2)\n", 1),
        ("import torch\nx = torch.eye(2, device='cpu')\n", 0),
        ("from torch import eye\nx = eye(2)\n", 1),
        ("import numpy as torch2\nx = torch2.eye(2)\n", 0),  # not torch
        ("x = eye(2)\n", 0),  # a local function that happens to share the name
    ],
)
def test_the_scan_follows_how_torch_was_imported(source: str, count: int) -> None:
    assert len(constructor_calls_without_device(source)) == count
