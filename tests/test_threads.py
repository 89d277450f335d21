"""peftkit.threads: the passive OpenMP wait policy is set before torch loads, and never overrides the user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import os, sys; from peftkit.threads import prefer_passive_openmp; {before}"
    "print(prefer_passive_openmp(), os.environ.get('OMP_WAIT_POLICY'))"
)


def probe(before: str = "", **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("before", "env", "expected"),
    [
        ("", {}, "True PASSIVE"),
        ("", {"OMP_WAIT_POLICY": "active"}, "False active"),  # the user's choice is kept
        ("", {"GOMP_SPINCOUNT": "10000"}, "False None"),  # a spin count is a choice too
        ("import torch; ", {}, "False None"),  # too late once torch (libgomp) is loaded
    ],
)
def test_prefer_passive_openmp(before: str, env: dict[str, str], expected: str) -> None:
    assert probe(before, **env) == expected


def test_recipes_and_benchmarks_set_it_before_torch() -> None:
    code = (
        "import sys; sys.path.insert(0, 'recipes'); import {module}, os; "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    for module in ("common", "benchmarks"):
        clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        done = subprocess.run(
            [sys.executable, "-c", code.format(module=module)],
            env=clean,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        assert done.stdout.strip().splitlines()[-1] == "PASSIVE", module
