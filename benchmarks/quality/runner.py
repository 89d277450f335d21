"""Run one cell: the recipe as a subprocess, then a record made from its ``metrics.json``.

CPU-seconds are the user + system time of the recipe process and its children
(``getrusage(RUSAGE_CHILDREN)`` around the run; cells run one at a time), so they include start-up
and evaluation and do not depend on the machine's load the way wall time does.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.quality.grid import BASES, TASKS, Cell, method_args

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


@dataclasses.dataclass
class RunSettings:
    """How cells run.

    Attributes:
        work_dir: Each cell writes its recipe outputs to ``work_dir/<cell key>``.
        threads: torch threads of the recipe (``--threads``).
        extra_args: Per task, options added to every run (``--tiny``: model, data, short training).
        timeout: Seconds before a cell is stopped and recorded as failed.
        budget: Train at the task's budget size (:attr:`Task.budget`) rather than the recipe's own.

    """

    work_dir: Path
    threads: int = 2
    extra_args: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    timeout: float = 4 * 3600
    budget: bool = True


def command(cell: Cell, settings: RunSettings) -> list[str]:
    """The recipe command line of ``cell``."""
    task = TASKS[cell.task]
    return [
        sys.executable, str(RECIPES / task.recipe), *method_args(cell.method, task, settings.budget),
        *BASES[cell.base], *(task.budget if settings.budget else ()),
        "--seed", str(cell.seed), "--threads", str(settings.threads), "--checkpoint-every", "0",
        "--output-dir", str(settings.work_dir / cell.key), *settings.extra_args.get(cell.task, []),
    ]  # fmt: skip


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cell(cell: Cell, settings: RunSettings) -> dict[str, Any]:
    """Run ``cell``'s recipe and return its record (``"status": "ok"`` or ``"failed"``)."""
    out = settings.work_dir / cell.key
    shutil.rmtree(out, ignore_errors=True)  # a stale run would append to metrics.jsonl
    argv = command(cell, settings)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    record: dict[str, Any] = {
        **dataclasses.asdict(cell),
        "variant": cell.variant,
        "size": "budget" if settings.budget else "recipe",
        "command": shlex.join(argv[1:]).replace(str(REPO) + os.sep, ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    cpu_before, start = _children_cpu_seconds(), time.perf_counter()
    try:
        done = subprocess.run(
            argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=settings.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**record, "status": "failed", "error": f"timed out after {settings.timeout:.0f} s"}
    record.update(
        cpu_seconds=round(_children_cpu_seconds() - cpu_before, 1),
        wall_seconds=round(time.perf_counter() - start, 1),
    )
    metrics_file = out / "metrics.json"
    if done.returncode != 0 or not metrics_file.is_file():
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-15:]
        return {**record, "status": "failed", "returncode": done.returncode, "error": "\n".join(tail)}
    return {**record, "status": "ok", **summarize(json.loads(metrics_file.read_text(encoding="utf-8")), cell)}


def summarize(metrics: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The fields of a recipe's ``metrics.json`` that the grid keeps."""
    metric = TASKS[cell.task].metric
    test, valid = metrics.get("test") or {}, metrics.get("valid") or {}
    trainable, total = metrics.get("trainable_params"), metrics.get("total_params")
    kept = ("f1", "precision", "recall", "accuracy", "macro_f1", "loss", "predicted_classes")
    return {
        "metric": metric,
        "score": test.get(metric),
        "valid_score": valid.get(metric),
        "test": {k: v for k, v in test.items() if k in kept},
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100 * trainable / total, 3) if trainable and total else None,
        "adapter_bytes": metrics.get("adapter_bytes"),
        "recipe_cpu_seconds": metrics.get("cpu_seconds"),
        "train_cpu_seconds": metrics.get("train_cpu_seconds"),
        "global_step": metrics.get("global_step"),
        "selected": metrics.get("selected"),
        "warnings": len(metrics.get("warnings") or []),
        "torch_threads": metrics.get("torch_threads"),
    }
