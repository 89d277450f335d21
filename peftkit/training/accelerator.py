"""Creating (and, between in-process runs, resetting) the Accelerator used by the loop."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration

from peftkit.config import TrainConfig

logger = logging.getLogger(__name__)


def build_accelerator(config: TrainConfig, **kwargs: Any) -> Accelerator:
    """An :class:`~accelerate.Accelerator` set up for :func:`peftkit.training.train`.

    Gradient accumulation, mixed precision and CPU forcing come from ``config``; shuffling uses
    Accelerate's seedable sampler seeded with ``config.seed`` so that the data order of every
    epoch is reproducible, which exact resumption needs.

    Two CPU processes: ``accelerate launch --cpu --num_processes 2`` starts only *one* process
    in Accelerate 1.x; use ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``
    (or ``--cpu`` in the recipe's config under ``torchrun --nproc_per_node 2``). A run started
    the first way is told so, with the working command (:func:`lost_processes_message`).

    Args:
        config: The training config.
        **kwargs: Further ``Accelerator`` arguments (e.g. ``log_with``).

    """
    kwargs.setdefault(
        "dataloader_config", DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed)
    )
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        **kwargs,
    )
    message = lost_processes_message(accelerator.num_processes)
    if message:
        logger.warning(message)
    return accelerator


def lost_processes_message(num_processes: int, environ: dict[str, str] | None = None) -> str | None:
    """Say so when ``accelerate launch --cpu --num_processes N`` (N > 1) started a single process.

    Accelerate's simple launcher, which ``--cpu`` selects, exports ``MASTER_ADDR`` when asked for
    more than one process but starts only one (unless it runs mpirun), and no ``WORLD_SIZE``: the
    run then trains on one process as if all were well.

    Args:
        num_processes: The accelerator's process count.
        environ: The environment (default: ``os.environ``).

    Returns:
        The warning, with the command that starts N CPU processes, or ``None``.

    """
    env = os.environ if environ is None else environ
    if num_processes != 1 or "MASTER_ADDR" not in env or "WORLD_SIZE" in env or "LOCAL_RANK" in env:
        return None
    if env.get("ACCELERATE_USE_CPU", "").strip().lower() not in ("1", "true", "yes"):
        return None
    if any(name in env for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return None  # an mpirun launch: accelerate handles it
    requested = _requested_processes() or "N"
    command = " ".join(shlex.quote(part) for part in sys.argv)
    return (
        f"accelerate launch was asked for {requested} processes on CPU but started only this one "
        "(its --cpu launcher runs a single process in Accelerate 1.x): this run trains on 1 process. "
        f"For {requested} CPU processes run: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
        f"--num_processes {requested} {command}"
    )


def _requested_processes() -> str | None:
    """``--num_processes`` of the launching ``accelerate launch`` command line (Linux), if readable."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--num_processes", "--num-processes"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            return value if value.isdigit() else None
    return None


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons, so that a new Accelerator can differ from the last.

    Accelerate keeps one ``AcceleratorState`` and one ``GradientState`` per process; a second
    ``Accelerator`` with other settings (e.g. another ``grad_accum``) in the same process
    silently shares them. Call this between two training runs in one process (tests,
    notebooks); never in the middle of a run.
    """
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
