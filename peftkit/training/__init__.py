"""Accelerate training machinery shared by the recipes.

* :func:`train` (:mod:`.loop`), :func:`build_accelerator` (:mod:`.accelerator`): the training loop with gradient
  accumulation, clipping, linear warm-up/decay, logging, evaluation, checkpoints, ``--resume``,
  graceful Ctrl-C/SIGTERM and numerical fault checks.
* :func:`evaluate` (:mod:`.evaluation`): distributed evaluation without duplicated samples.
* :class:`CheckpointManager`, :func:`find_latest_checkpoint` (:mod:`.checkpoint`).
* :class:`PeftkitTrainerCallback` (:mod:`.callbacks`): AdaLoRA's budget under ``transformers.Trainer``.
* :func:`planned_optimizer_steps` (:mod:`.optim`): the run's step count, e.g. for AdaLoRA's ``total_step``.
"""

from __future__ import annotations

from peftkit.training.accelerator import build_accelerator, reset_accelerate_state
from peftkit.training.callbacks import PeftkitTrainerCallback
from peftkit.training.checkpoint import CheckpointManager, checkpoint_dir_size, find_latest_checkpoint
from peftkit.training.evaluation import concat_padded, evaluate
from peftkit.training.faults import NumericGuard
from peftkit.training.loop import train
from peftkit.training.optim import build_optimizer, build_scheduler, planned_optimizer_steps
from peftkit.training.records import TrainResult

__all__ = [
    "train",
    "build_accelerator",
    "reset_accelerate_state",
    "TrainResult",
    "evaluate",
    "concat_padded",
    "CheckpointManager",
    "find_latest_checkpoint",
    "checkpoint_dir_size",
    "NumericGuard",
    "PeftkitTrainerCallback",
    "build_optimizer",
    "build_scheduler",
    "planned_optimizer_steps",
]
