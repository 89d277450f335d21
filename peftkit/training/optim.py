"""Optimizer, learning-rate schedule and step counting for the training loop."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from peftkit.config import TrainConfig
from peftkit.errors import TrainingError

_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "ln_")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases and normalisation weights get no weight decay.

    With ``config.head_lr`` the task heads (:func:`peftkit.targets.head_module_names`: ``classifier``,
    ``score``, ...) form groups of their own at that learning rate; the schedule scales every group
    alike.

    Args:
        model: The (wrapped) model; only parameters with ``requires_grad`` are optimised.
        config: Provides ``lr``, ``head_lr`` and ``weight_decay``.

    Raises:
        TrainingError: The model has no trainable parameter, or ``head_lr`` is set but the model
            has no trainable task head.

    """
    from peftkit.targets import head_module_names

    split_head = config.head_lr is not None
    heads = head_module_names(model) if split_head else []
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_head = any(name == h or name.startswith(h + ".") for h in heads)
        no_decay = any(key in name for key in _NO_DECAY)
        groups.setdefault((in_head, no_decay), []).append(param)
    if not groups:
        raise TrainingError(
            "The model has no trainable parameter: wrap it first, e.g. model = peftkit.wrap(model, 'lora')."
        )
    if split_head and not any(in_head for in_head, _ in groups):
        raise TrainingError(
            f"head_lr={config.head_lr} but the model has no trainable task head (found heads: {heads or 'none'}): "
            "unset head_lr, or train a model with a classification head."
        )
    order = [(False, False), (False, True), (True, False), (True, True)]
    return torch.optim.AdamW(
        [
            {
                "params": groups[key],
                "weight_decay": 0.0 if key[1] else config.weight_decay,
                "lr": config.head_lr if key[0] else config.lr,
            }
            for key in order
            if key in groups
        ],
        lr=config.lr,
    )


class WarmupSchedule:
    """Learning-rate multiplier: linear warm-up, then linear decay to 0 (or constant).

    A plain callable object (not a lambda) so that :class:`~torch.optim.lr_scheduler.LambdaLR`
    includes its fields in ``state_dict()``, which stays JSON-serialisable.

    Args:
        warmup_steps: Steps of linear warm-up from 0 to the peak learning rate.
        total_steps: Optimizer steps of the whole run.
        decay: Decay linearly to 0 at ``total_steps`` (``False``: stay at the peak).

    """

    def __init__(self, warmup_steps: int, total_steps: int, decay: bool = True) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.decay = decay

    def __call__(self, step: int) -> float:
        """Multiplier of the peak learning rate for the step about to be taken (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if not self.decay:
            return 1.0
        remaining = self.total_steps - step
        return max(0.0, remaining / max(1, self.total_steps - self.warmup_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LambdaLR:
    """The schedule of ``config.lr_schedule`` with ``warmup_steps`` or ``warmup_ratio * total_steps`` warm-up."""
    warmup = (
        config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total_steps)
    )
    return LambdaLR(optimizer, WarmupSchedule(warmup, total_steps, decay=config.lr_schedule == "linear"))


def resume_schedule(scheduler: LambdaLR, saved: dict[str, Any]) -> None:
    """Continue at ``saved``'s step under *this* run's learning rate and schedule.

    A saved scheduler state holds the step count and also the original run's peak learning rates
    and schedule fields (total steps, warm-up); loading it as it is would silently keep those
    after a resume with another ``--lr`` or ``--epochs``. Only the step count is taken; each
    parameter group's learning rate is then set for that step, overriding the one restored with
    the optimizer state. With unchanged settings every value is the same as saved, so resuming
    stays bit-exact.

    Args:
        scheduler: The scheduler built for the current run.
        saved: ``scheduler.state_dict()`` of the run being resumed.

    """
    current = scheduler.state_dict()
    scheduler.load_state_dict({**saved, "base_lrs": current["base_lrs"], "lr_lambdas": current["lr_lambdas"]})
    step = scheduler.last_epoch
    rates = [
        base * schedule(step) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, rate, base in zip(scheduler.optimizer.param_groups, rates, scheduler.base_lrs, strict=True):
        group["lr"], group["initial_lr"] = rate, base
    scheduler._last_lr = rates


def steps_per_epoch(batches_per_process: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch: the last, shorter accumulation window also steps."""
    return math.ceil(batches_per_process / grad_accum)


def planned_optimizer_steps(num_batches: int, config: TrainConfig, num_processes: int = 1) -> int:
    """Optimizer steps of a whole run, e.g. for AdaLoRA's ``total_step`` before the loop starts.

    Args:
        num_batches: ``len(train_dataloader)`` *before* ``accelerator.prepare`` (batches of the
            whole data set at the per-process batch size).
        config: Provides ``epochs``, ``grad_accum`` and ``max_steps``.
        num_processes: ``accelerator.num_processes``; Accelerate gives every process
            ``ceil(num_batches / num_processes)`` batches.

    Returns:
        The number of optimizer steps :func:`peftkit.training.train` will take.

    Example:
        >>> from peftkit.config import TrainConfig
        >>> planned_optimizer_steps(10, TrainConfig(epochs=2, grad_accum=4), num_processes=1)
        6

    """
    per_process = math.ceil(num_batches / num_processes)
    total = steps_per_epoch(per_process, config.grad_accum) * config.epochs
    return min(total, config.max_steps) if config.max_steps else total
