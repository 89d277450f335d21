"""Plain records of a training run: its result, its resumable counters, and resume helpers."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Config fields that change the training trajectory; a resume with other values is warned about.
TRAJECTORY_FIELDS = (
    "seed", "epochs", "max_steps", "lr", "head_lr", "weight_decay", "lr_schedule", "warmup_ratio", "warmup_steps",
    "batch_size", "grad_accum", "max_grad_norm", "mixed_precision",
)  # fmt: skip


@dataclass
class TrainResult:
    """Outcome of :func:`peftkit.training.train`.

    Attributes:
        global_step: Optimizer steps taken (including those before a resume).
        epoch: Epoch the loop was in when it ended (equals ``epochs`` after a full run).
        train_loss: Mean loss of the last logged window (or of the last step).
        eval_metrics: Metrics of the last evaluation, if any.
        history: Logged training and evaluation records (as in ``metrics.jsonl``).
        interrupted: Whether SIGINT/SIGTERM stopped the run early (a checkpoint was saved).
        stop_signal: ``"SIGINT"`` or ``"SIGTERM"`` when interrupted.
        last_checkpoint: The newest complete checkpoint, if any.
        best: With ``select_best``: the evaluation kept (``metric``, ``value``, ``step``, ``epoch``)
            and the last one (``last_step``, ``last_value``); the model holds the kept weights.
        warnings: Problems noticed during training, e.g. single-class evaluations, as
            ``{"step", "epoch", "kind", "message"}`` records.

    """

    global_step: int
    epoch: int
    train_loss: float | None
    eval_metrics: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    stop_signal: str | None = None
    last_checkpoint: Path | None = None
    best: dict[str, Any] | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 after a full run, 130 after SIGINT, 143 after SIGTERM (shell conventions)."""
        return {"SIGINT": 130, "SIGTERM": 143}.get(self.stop_signal or "", 0)


@dataclass
class LoopState:
    """Counters saved in checkpoints (JSON).

    Attributes:
        global_step: Optimizer steps taken.
        epoch: Current epoch (0-based).
        batches_in_epoch: Micro-batches of the current epoch already consumed (per process).
        reference_loss: Loss of the first optimizer step (for the explosion check).

    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    reference_loss: float | None = None


def trajectory_settings(config: object) -> dict[str, Any]:
    """The config values that a resumed run must share with the original one."""
    return {name: getattr(config, name, None) for name in TRAJECTORY_FIELDS}


def changed_settings(
    payload: dict[str, Any], config: object, num_processes: int
) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between a checkpoint's payload and the current run, as ``{name: (old, new)}``."""
    changed = {
        name: (old, getattr(config, name, None))
        for name, old in payload.get("config", {}).items()
        if old != getattr(config, name, None)
    }
    if payload.get("num_processes", num_processes) != num_processes:
        changed["num_processes"] = (payload["num_processes"], num_processes)
    return changed


def resume_command(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The command that continues this run from its newest checkpoint (for the message after a stop).

    The current command line, with ``--resume`` instead of any ``--resume-from DIR`` (that
    checkpoint may be pruned by now), behind ``accelerate launch`` and its process count when
    the run was started that way.

    Args:
        argv: The command line (default ``sys.argv``).
        environ: The environment (default ``os.environ``): Accelerate's launcher sets
            ``ACCELERATE_MIXED_PRECISION``, and ``WORLD_SIZE`` for several processes.

    """
    args = list(sys.argv if argv is None else argv)
    env = os.environ if environ is None else environ
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--resume-from":
            skip = True
        elif not arg.startswith("--resume-from="):
            kept.append(arg)
    if "--resume" not in kept:
        kept.append("--resume")
    if "ACCELERATE_MIXED_PRECISION" not in env:  # started as a plain script
        return shlex.join([Path(sys.executable).name, *kept])
    processes = int(env.get("WORLD_SIZE", "1") or 1)
    on_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    launch = ["accelerate", "launch"]
    if processes > 1:
        launch += ["--multi_gpu", "--num_processes", str(processes)]
    elif on_cpu:
        launch.append("--cpu")
    prefix = (
        "ACCELERATE_USE_CPU=1 " if on_cpu and processes > 1 else ""
    )  # see the README: --cpu runs 1 process
    return prefix + shlex.join([*launch, *kept])
