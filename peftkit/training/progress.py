"""Progress bar, periodic log lines and a JSON-lines metrics file, on the main process only.

Every ``log_every`` optimizer steps one record is logged and appended to
``<output_dir>/metrics.jsonl``::

    {"step": 40, "epoch": 0.8, "loss": 1.234, "lr": 0.0005, "grad_norm": 0.91,
     "tokens_per_s": 5321.0, "tokens": 212840}

``loss`` is the mean micro-batch loss over the window and over all processes; ``tokens_per_s``
counts non-padding tokens (``attention_mask.sum()``, else ``input_ids.numel()``) of all
processes per second of wall-clock time in the window, evaluation and checkpointing included.
Evaluation results are appended as ``{"step": ..., "eval": {...}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

logger = get_logger(__name__)


def count_tokens(batch: Any) -> int:
    """Non-padding tokens of a batch: ``attention_mask.sum()``, else ``input_ids.numel()``, else 0."""
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return int(mask.sum().item())
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return ids.numel()
    return 0


class ProgressReporter:
    """tqdm bar over optimizer steps plus windowed loss / tokens-per-second logging.

    Args:
        accelerator: Decides which process is the main one.
        total_steps: Optimizer steps of the run.
        initial_step: Steps already done (when resuming).
        log_every: Log every N optimizer steps.
        metrics_file: JSON-lines file to append records to (main process only), or ``None``.

    """

    def __init__(
        self,
        accelerator: Accelerator,
        total_steps: int,
        initial_step: int,
        log_every: int,
        metrics_file: Path | None,
    ) -> None:
        self.main = accelerator.is_main_process
        self.log_every = log_every
        self.metrics_file = metrics_file if self.main else None
        # disable=None lets tqdm switch itself off when stderr is not a terminal (CI logs).
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=True if not accelerator.is_local_main_process else None,
        )
        self._reset_window()
        self.history: list[dict[str, Any]] = []

    def _reset_window(self) -> None:
        self._start = time.perf_counter()
        self._loss_sum = 0.0
        self._micro = 0
        self._tokens = 0

    def step(
        self, step: int, epoch: float, loss_sum: float, micro_batches: int, tokens: int, **extra: float
    ) -> None:
        """Record one optimizer step (values already summed over processes); log every ``log_every``."""
        self._loss_sum += loss_sum
        self._micro += micro_batches
        self._tokens += tokens
        self.bar.update(1)
        if step % self.log_every:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        record: dict[str, Any] = {
            "step": step,
            "epoch": round(epoch, 4),
            "loss": self._loss_sum / max(self._micro, 1),
            **extra,
            "tokens_per_s": round(self._tokens / elapsed, 1),
            "tokens": self._tokens,
        }
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        logger.info(
            "step %d | epoch %.2f | loss %.4f | lr %.3g | grad_norm %.3g | %.0f tokens/s",
            step,
            epoch,
            record["loss"],
            extra.get("lr", float("nan")),
            extra.get("grad_norm", float("nan")),
            record["tokens_per_s"],
        )
        self._write(record)
        self._reset_window()

    def eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log and record evaluation metrics."""
        text = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        logger.info("eval at step %d: %s", step, text)
        self._write({"step": step, "eval": dict(metrics)})

    def message(self, text: str, *args: Any) -> None:
        """Log an info line without breaking the progress bar."""
        logger.info(text, *args)

    def _write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.metrics_file is not None:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=float) + "\n")

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
