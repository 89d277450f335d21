"""peftkit.threads: a short OpenMP spin count is set before torch loads, and never overrides the user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit.threads import SPIN_COUNT

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import os, sys; from peftkit.threads import limit_openmp_spinning; {before}"
    "print(limit_openmp_spinning(), os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
)
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("before", "env", "expected"),
    [
        ("", {}, f"True None {SPIN_COUNT}"),
        ("", {"OMP_WAIT_POLICY": "passive"}, "False passive None"),  # the user's choice is kept
        ("", {"GOMP_SPINCOUNT": "10000"}, "False None 10000"),  # a spin count is a choice too
        ("import torch; ", {}, "False None None"),  # too late once torch (libgomp) is loaded
    ],
)
def test_limit_openmp_spinning(before: str, env: dict[str, str], expected: str) -> None:
    assert run_python(PROBE.format(before=before), **env) == expected


@pytest.mark.parametrize("module", ["common", "benchmarks"])
def test_recipes_and_benchmarks_set_it_before_torch(module: str) -> None:
    code = f"import sys; sys.path.insert(0, 'recipes'); import {module}, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert run_python(code) == str(SPIN_COUNT)
