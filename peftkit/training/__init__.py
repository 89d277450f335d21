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

from typing import TYPE_CHECKING

from peftkit import _lazy

# Lazy (see peftkit._lazy): the Trainer callback alone imports transformers' Trainer stack and peft
# (seconds), which a recipe's --help or a plain Accelerate loop never needs.
__getattr__, __dir__ = _lazy.install(
    __name__,
    {
        **dict.fromkeys(("build_accelerator", "reset_accelerate_state"), "peftkit.training.accelerator"),
        "PeftkitTrainerCallback": "peftkit.training.callbacks",
        **dict.fromkeys(
            ("CheckpointManager", "checkpoint_dir_size", "find_latest_checkpoint"),
            "peftkit.training.checkpoint",
        ),
        **dict.fromkeys(("concat_padded", "evaluate"), "peftkit.training.evaluation"),
        "NumericGuard": "peftkit.training.faults",
        "train": "peftkit.training.loop",
        **dict.fromkeys(
            ("build_optimizer", "build_scheduler", "planned_optimizer_steps"), "peftkit.training.optim"
        ),
        "TrainResult": "peftkit.training.records",
    },
)

if TYPE_CHECKING:
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
