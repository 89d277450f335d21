"""Creating (and, between in-process runs, resetting) the Accelerator used by the loop."""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration

from peftkit.config import TrainConfig


def build_accelerator(config: TrainConfig, **kwargs: Any) -> Accelerator:
    """An :class:`~accelerate.Accelerator` set up for :func:`peftkit.training.train`.

    Gradient accumulation, mixed precision and CPU forcing come from ``config``; shuffling uses
    Accelerate's seedable sampler seeded with ``config.seed`` so that the data order of every
    epoch is reproducible, which exact resumption needs.

    Two CPU processes: ``accelerate launch --cpu --num_processes 2`` starts only *one* process
    in Accelerate 1.x; use ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``
    (or ``--cpu`` in the recipe's config under ``torchrun --nproc_per_node 2``).

    Args:
        config: The training config.
        **kwargs: Further ``Accelerator`` arguments (e.g. ``log_with``).

    """
    kwargs.setdefault(
        "dataloader_config", DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed)
    )
    return Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        **kwargs,
    )


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons, so that a new Accelerator can differ from the last.

    Accelerate keeps one ``AcceleratorState`` and one ``GradientState`` per process; a second
    ``Accelerator`` with other settings (e.g. another ``grad_accum``) in the same process
    silently shares them. Call this between two training runs in one process (tests,
    notebooks); never in the middle of a run.
    """
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
