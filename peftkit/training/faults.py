"""Numerical fault detection: non-finite losses or gradients, and exploding losses.

Checks run on values already reduced across processes, just *before* ``optimizer.step()``, so
every process stops at the same step and the weights are never updated with a bad gradient.

* A NaN/inf loss or gradient norm raises :class:`TrainingError` naming the optimizer step, the
  micro-batch (epoch, index in the epoch, process) and the last good checkpoint, which is kept.
* A loss above ``explode_factor`` x the first step's loss (default 1000x) also raises
  :class:`TrainingError`, explaining that the learning rate is most likely too high. This is an
  error rather than a warning: at that point the run has diverged, and every further step only
  wastes time and moves the weights further from the last good checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import TrainingError

#: Losses below this are treated as this value when computing the explosion threshold, so a
#: near-zero first loss does not make every later fluctuation look like an explosion.
MIN_REFERENCE_LOSS = 1e-2


@dataclass
class StepReport:
    """What the guard needs to know about one optimizer step (values reduced across processes).

    Attributes:
        step: The 1-based number of the optimizer step being taken.
        loss: Mean loss of the step's micro-batches over all processes.
        grad_norm: Total gradient norm (before clipping).
        epoch: Current epoch (0-based).
        batches: ``(first, last)`` 0-based micro-batch indices of the step within the epoch.
        bad_batch: ``(process, batch index)`` of the first non-finite micro-batch loss, if known.
        peak_lr: The configured (peak) learning rate, named in the advice.

    """

    step: int
    loss: float
    grad_norm: float
    epoch: int
    batches: tuple[int, int]
    bad_batch: tuple[int, int] | None = None
    peak_lr: float | None = None


class NumericGuard:
    """Raise :class:`TrainingError` on non-finite or exploding losses.

    Args:
        explode_factor: Ratio to the reference loss that counts as an explosion (0 disables).
        reference_loss: Loss of the first optimizer step, if already known (when resuming).

    """

    def __init__(self, explode_factor: float = 1000.0, reference_loss: float | None = None) -> None:
        self.explode_factor = explode_factor
        self.reference_loss = reference_loss

    def check(
        self, report: StepReport, last_checkpoint: Callable[[], Path | None] | Path | None = None
    ) -> None:
        """Validate one step; sets the reference loss on the first finite step.

        Args:
            report: The step's reduced values.
            last_checkpoint: The newest complete checkpoint, or a function returning it (only
                called when an error is raised).

        Raises:
            TrainingError: Non-finite loss or gradient norm, or an exploding loss.

        """
        where = self._where(report)
        latest = last_checkpoint

        def resume() -> str:
            return self._resume_hint(latest() if callable(latest) else latest)

        if not math.isfinite(report.loss) or not math.isfinite(report.grad_norm):
            what = "loss" if not math.isfinite(report.loss) else "gradient norm"
            value = report.loss if what == "loss" else report.grad_norm
            raise TrainingError(
                f"Non-finite {what} ({value}) at optimizer step {report.step}, {where}; the weights were not "
                f"updated by this step. {resume()} Likely causes: a learning rate too high (--lr), fp16 overflow "
                "(use --mixed-precision bf16 or no), or a batch whose labels are all -100 (a mean over zero "
                "tokens is NaN): check that batch."
            )
        if self.reference_loss is None:
            self.reference_loss = report.loss
            return
        reference = max(self.reference_loss, MIN_REFERENCE_LOSS)
        if self.explode_factor and report.loss > self.explode_factor * reference:
            lr = f" (--lr {report.peak_lr:g})" if report.peak_lr is not None else ""
            raise TrainingError(
                f"The loss exploded at optimizer step {report.step}, {where}: {report.loss:.4g} is more than "
                f"{self.explode_factor:g}x the first step's loss {self.reference_loss:.4g}. The learning rate"
                f"{lr} is most likely too high: lower it 3-10x, add warm-up (--warmup-ratio 0.06) or keep "
                f"gradient clipping on (--max-grad-norm 1.0). {resume()} (--explode-factor 0 disables this check.)"
            )

    @staticmethod
    def _where(report: StepReport) -> str:
        if report.bad_batch is not None:
            process, index = report.bad_batch
            return f"epoch {report.epoch}, batch {index} of the epoch (process {process})"
        first, last = report.batches
        span = f"batch {first}" if first == last else f"batches {first}-{last}"
        return f"epoch {report.epoch}, {span} of the epoch"

    @staticmethod
    def _resume_hint(last_checkpoint: Path | None) -> str:
        if last_checkpoint is None:
            return "No checkpoint was written yet (save them with --checkpoint-every N)."
        return f"The last good checkpoint, {last_checkpoint}, is kept: fix the cause and rerun with --resume."
