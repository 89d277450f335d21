"""The shared training loop of the recipes, on Accelerate.

Shaped like Accelerate's ``examples/nlp_example.py``; a recipe does::

    config = parse_config(MyRecipeConfig, argv)
    accelerator = build_accelerator(config)
    with accelerator.main_process_first():
        train_dl, eval_dl = get_dataloaders(config)
    model = peftkit.wrap(load_base(config), config.method, **config.wrap_options())
    result = train(model, train_dl, config, accelerator=accelerator,
                   eval_dataloader=eval_dl, eval_step=ner_step, compute_metrics=seqeval_f1)
    sys.exit(result.exit_code)

One optimizer step, on every process::

    for each of grad_accum micro-batches (inside accelerator.accumulate):
        loss = model(**batch).loss ; accelerator.backward(loss)
    clip gradients -> all-gather (loss, tokens, stop request) -> NumericGuard check
    optimizer.step() -> peftkit.on_optimizer_step(unwrapped, step) -> scheduler.step() -> zero_grad()
    log / evaluate / checkpoint every N steps; stop cleanly after SIGINT or SIGTERM

With ``config.select_best`` (e.g. ``"f1"``) the weights of the best evaluation are put back at the
end (:mod:`.selection`); an evaluation whose predictions are all one class is warned about.

Resuming (``--resume``) restores weights, optimizer, scheduler, RNG states, step counters, the
epoch (``set_epoch`` of Accelerate's seedable sampler) and the position in the epoch
(``accelerator.skip_first_batches``), and reaches the same final weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn

import peftkit
from peftkit.config import TrainConfig, save_config
from peftkit.errors import ConfigError, TrainingError
from peftkit.training.accelerator import build_accelerator
from peftkit.training.checkpoint import CheckpointManager
from peftkit.training.evaluation import ComputeMetrics, EvalStep, evaluate
from peftkit.training.faults import NumericGuard, StepReport
from peftkit.training.method_state import collect_method_state, restore_method_state
from peftkit.training.optim import build_optimizer, build_scheduler, resume_schedule, steps_per_epoch
from peftkit.training.progress import ProgressReporter, count_tokens
from peftkit.training.records import (
    LoopState,
    TrainResult,
    changed_settings,
    resume_command,
    trajectory_settings,
)
from peftkit.training.selection import BestKeeper, single_class_warning
from peftkit.training.signals import StopRequest

logger = get_logger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def train(
    model: nn.Module,
    train_dataloader: Any,
    config: TrainConfig,
    *,
    accelerator: Accelerator | None = None,
    eval_dataloader: Any = None,
    eval_step: EvalStep | None = None,
    compute_metrics: ComputeMetrics | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    compute_loss: LossFn | None = None,
) -> TrainResult:
    """Train ``model`` with the settings of ``config``; resumable, checkpointed, fault-checked.

    Args:
        model: The model (usually wrapped by :func:`peftkit.wrap`), not yet prepared.
        train_dataloader: A plain ``DataLoader`` yielding dict batches (prepared here).
        config: Training settings (:class:`~peftkit.config.TrainConfig` or a subclass).
        accelerator: From :func:`build_accelerator` (default: built from ``config``).
        eval_dataloader: Optional evaluation ``DataLoader``; evaluated every ``eval_every``
            steps (0: at the end of every epoch) and at the end. With ``config.select_best`` the
            model ends with the weights of the best evaluation (see ``TrainResult.best``).
        eval_step: Per-batch evaluation function (see :mod:`peftkit.training.evaluation`).
        compute_metrics: Whole-set metric function (see :mod:`peftkit.training.evaluation`).
        optimizer: Optimizer over the model's trainable parameters (default: AdamW, ``config.lr``).
        compute_loss: ``(model, batch) -> loss`` (default: ``model(**batch).loss``).

    Python, NumPy and torch are seeded with ``config.seed`` just before ``accelerator.prepare``
    (after the model was built), so that the data order and dropout depend only on the seed.

    Returns:
        A :class:`TrainResult`; ``result.interrupted`` after SIGINT/SIGTERM (a checkpoint was saved
        and the way to resume was logged).

    Raises:
        TrainingError: Non-finite or exploding loss (naming step, batch and last good checkpoint),
            a model without loss or trainable parameters, or an unusable checkpoint.
        ConfigError: ``accelerator`` disagrees with ``config.grad_accum``, or ``select_best``
            without an evaluation set.

    """
    return _Loop(
        model,
        train_dataloader,
        config,
        accelerator,
        eval_dataloader,
        eval_step,
        compute_metrics,
        optimizer,
        compute_loss,
    ).run()


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    outputs = model(**batch)
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise TrainingError(
            "The model returned no loss: batches need a 'labels' entry (or pass compute_loss=...)."
        )
    return loss


def _rng_neutral_start(loader: Any) -> Iterator[Any]:
    """Iterate ``loader`` without letting the start of the iteration draw from the torch RNG.

    Creating a ``DataLoader`` iterator draws a base seed from the global generator. An
    uninterrupted run draws it at the start of the epoch, a resumed one mid-epoch (where the
    checkpoint's RNG state was restored), so the draw is isolated to keep dropout identical.
    """
    iterator = iter(loader)
    with torch.random.fork_rng(devices=[]):
        first = next(iterator, _END)
    if first is _END:
        return
    yield first
    yield from iterator


_END = object()


class _Loop:
    """State and steps of one :func:`train` call."""

    def __init__(
        self,
        model: nn.Module,
        train_dataloader: Any,
        config: TrainConfig,
        accelerator: Accelerator | None,
        eval_dataloader: Any,
        eval_step: EvalStep | None,
        compute_metrics: ComputeMetrics | None,
        optimizer: torch.optim.Optimizer | None,
        compute_loss: LossFn | None,
    ) -> None:
        self.config = config
        self.acc = accelerator or build_accelerator(config)
        if self.acc.gradient_accumulation_steps != config.grad_accum:
            raise ConfigError(
                f"The accelerator accumulates {self.acc.gradient_accumulation_steps} micro-batches but "
                f"grad_accum={config.grad_accum}: build it with peftkit.training.build_accelerator(config)."
            )
        set_seed(config.seed)
        optimizer = optimizer or build_optimizer(model, config)
        raw_optimizer = optimizer
        extra = [eval_dataloader] if eval_dataloader is not None else []
        prepared = self.acc.prepare(model, optimizer, train_dataloader, *extra)
        self.model, self.optimizer, self.train_dl = prepared[:3]
        self.eval_dl = prepared[3] if eval_dataloader is not None else None
        self.unwrapped = self.acc.unwrap_model(self.model)
        self.eval_step, self.compute_metrics = eval_step, compute_metrics
        self.compute_loss = compute_loss or _default_loss
        self.steps_per_epoch = steps_per_epoch(len(self.train_dl), config.grad_accum)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.scheduler = build_scheduler(raw_optimizer, config, self.total_steps)
        self.out = Path(config.output_dir)
        self.ckpt = CheckpointManager(
            self.out / "checkpoints",
            self.acc,
            self.unwrapped,
            keep=config.keep_checkpoints,
            trainable_only=config.checkpoint_trainable_only,
        )
        self.state = LoopState()
        self.last_saved_step: int | None = None
        self.last_eval_step: int | None = None
        self.eval_metrics: dict[str, float] | None = None
        self.warnings: list[dict[str, Any]] = []
        self.best: BestKeeper | None = None
        if config.select_best:
            if self.eval_dl is None:
                raise ConfigError(
                    f"select_best={config.select_best!r} needs an evaluation set: pass eval_dataloader "
                    "(a recipe's validation data) or unset select_best."
                )
            self.best = BestKeeper(config.select_best, self.unwrapped)
        self._micro: list[float] = []  # loss of each micro-batch of the current step
        self._tokens = 0
        self._bad_batch = -1
        self._last_loss: float | None = None

    # ------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Resume if asked, train until done or stopped, and return the result."""
        if self.acc.is_main_process and dataclasses.is_dataclass(self.config):
            save_config(self.config, self.out / "config.yaml")
        self._maybe_resume()
        self.guard = NumericGuard(self.config.explode_factor, self.state.reference_loss)
        self.progress = ProgressReporter(
            self.acc,
            self.total_steps,
            self.state.global_step,
            self.config.log_every,
            self.out / "metrics.jsonl",
        )
        logger.info(
            "Training %d optimizer steps (%d per epoch, %d epochs), %d process(es), batch %d x accum %d",
            self.total_steps, self.steps_per_epoch, self.config.epochs, self.acc.num_processes,
            self.config.batch_size, self.config.grad_accum,
        )  # fmt: skip
        stop_signal = None
        try:
            with StopRequest() as self.stop:
                stop_signal = self._train()
        except KeyboardInterrupt:
            logger.warning("Aborted without saving; the last complete checkpoint is %s.", self.ckpt.latest())
            raise
        finally:
            self.progress.close()
        if stop_signal is None:
            if self.eval_dl is not None and self.last_eval_step != self.state.global_step:
                self._evaluate()
            if self.config.checkpoint_every and self.last_saved_step != self.state.global_step:
                self._save()
        else:
            self._announce_stop(stop_signal)
        self.acc.wait_for_everyone()
        best = self._keep_best() if stop_signal is None else None
        losses = [r["loss"] for r in self.progress.history if "loss" in r]
        return TrainResult(
            global_step=self.state.global_step,
            epoch=self.state.epoch,
            train_loss=losses[-1] if losses else self._last_loss,
            eval_metrics=best["metrics"] if best else self.eval_metrics,
            history=self.progress.history,
            interrupted=stop_signal is not None,
            stop_signal=stop_signal,
            last_checkpoint=self.ckpt.latest(),
            best={k: v for k, v in best.items() if k != "metrics"} if best else None,
            warnings=list(self.warnings),
        )

    def _keep_best(self) -> dict[str, Any] | None:
        """Put the best evaluation's weights back (after the last checkpoint, which keeps the last ones)."""
        if self.best is None or self.best.restore() is None:
            return None
        kept, last = self.best.best, self.eval_metrics or {}
        assert kept is not None
        last_value = last.get(kept.metric)
        logger.info(
            "Keeping the best evaluation by %s: step %d (epoch %.2f), %s %.4f; the last one (step %s) had %s.",
            kept.metric, kept.step, kept.epoch, kept.metric, kept.value, self.last_eval_step,
            "the same weights" if kept.step == self.last_eval_step else f"{kept.metric} {last_value:.4f}",
        )  # fmt: skip
        return {
            "metric": kept.metric,
            "value": kept.value,
            "step": kept.step,
            "epoch": kept.epoch,
            "last_step": self.last_eval_step,
            "last_value": last_value,
            "metrics": kept.metrics,
        }

    def _train(self) -> str | None:
        """Epoch loop; returns the stop signal's name if interrupted."""
        self.model.train()
        while self.state.epoch < self.config.epochs and self.state.global_step < self.total_steps:
            self.train_dl.set_epoch(self.state.epoch)
            skip = self.state.batches_in_epoch
            loader = self.acc.skip_first_batches(self.train_dl, skip) if skip else self.train_dl
            finished_epoch = True
            for batch in _rng_neutral_start(loader):
                self.state.batches_in_epoch += 1
                signal_name = self._micro_step(batch)
                if signal_name is not None or self.state.global_step >= self.total_steps:
                    finished_epoch = self.state.batches_in_epoch >= len(self.train_dl)
                    getattr(loader, "end", lambda: None)()
                    if signal_name is not None:
                        return signal_name
                    break
            if finished_epoch:
                self.state.epoch += 1
                self.state.batches_in_epoch = 0
                if self.eval_dl is not None and self.last_eval_step != self.state.global_step:
                    self._evaluate()
        return None

    def _micro_step(self, batch: Any) -> str | None:
        with self.acc.accumulate(self.model):
            loss = self.compute_loss(self.model, batch)
            self.acc.backward(loss)
            value = loss.detach().float().item()
            if self._bad_batch < 0 and not math.isfinite(value):
                self._bad_batch = self.state.batches_in_epoch - 1
            self._micro.append(value)
            self._tokens += count_tokens(batch)
            if self.acc.sync_gradients:
                return self._optimizer_step()
        return None

    def _optimizer_step(self) -> str | None:
        """Clip, check, step, run method hooks, log/eval/checkpoint; returns a stop signal name."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.max_grad_norm or float("inf")
        grad_norm = float(self.acc.clip_grad_norm_(params, max_norm))
        local = torch.tensor(
            [sum(self._micro), len(self._micro), self._tokens, float(self.stop.requested), self._bad_batch],
            dtype=torch.float64,
            device=self.acc.device,
        )
        stats = self.acc.gather(local).reshape(-1, 5).cpu()
        loss_sum, micro, tokens = (stats[:, i].sum().item() for i in range(3))
        bad = [(p, int(i)) for p, i in enumerate(stats[:, 4].tolist()) if i >= 0]
        step_loss = loss_sum / max(micro, 1)
        lr = self.scheduler.get_last_lr()[0]
        report = StepReport(
            step=self.state.global_step + 1,
            loss=step_loss,
            grad_norm=grad_norm if self.acc.scaler is None else 0.0,  # fp16: the scaler skips inf steps
            epoch=self.state.epoch,
            batches=(self.state.batches_in_epoch - len(self._micro), self.state.batches_in_epoch - 1),
            bad_batch=bad[0] if bad else None,
            peak_lr=self.config.lr,
        )
        self.guard.check(report, self.ckpt.latest)
        self.state.reference_loss = self.guard.reference_loss
        self.optimizer.step()
        self.state.global_step += 1
        peftkit.on_optimizer_step(self.unwrapped, self.state.global_step)
        if not self.acc.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._micro, self._tokens, self._bad_batch = [], 0, -1
        self._last_loss = step_loss

        step = self.state.global_step
        epoch = self.state.epoch + self.state.batches_in_epoch / max(len(self.train_dl), 1)
        self.progress.step(step, epoch, loss_sum, int(micro), int(tokens), lr=lr, grad_norm=grad_norm)
        if self.eval_dl is not None and self.config.eval_every and step % self.config.eval_every == 0:
            self._evaluate()
        if self.config.checkpoint_every and step % self.config.checkpoint_every == 0:
            self._save()
        if stats[:, 3].sum().item() > 0:
            signal_name = self.stop.signal_name or "SIGTERM"  # another process got the signal
            if self.last_saved_step != step:
                self._save()
            return signal_name
        return None

    # ------------------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        metrics = evaluate(self.model, self.eval_dl, self.acc, self.eval_step, self.compute_metrics)
        step = self.state.global_step
        epoch = self.state.epoch + self.state.batches_in_epoch / max(len(self.train_dl), 1)
        self.eval_metrics = metrics
        self.last_eval_step = step
        self.progress.eval(step, metrics)
        warning = single_class_warning(metrics, step, epoch)
        if warning is not None:
            logger.warning(warning)
            self.warnings.append(
                {"step": step, "epoch": round(epoch, 4), "kind": "single_class", "message": warning}
            )
        if self.best is not None and self.best.update(metrics, step, epoch):
            logger.info("Best %s so far: %.4f at step %d.", self.best.metric, self.best.best.value, step)  # type: ignore[union-attr]

    def _save(self) -> Path:
        tensors, values = collect_method_state(self.unwrapped)
        best_tensors, best_record = self.best.state() if self.best is not None else ({}, None)
        payload = {
            "loop": dataclasses.asdict(self.state),
            "scheduler": self.scheduler.state_dict(),
            "method_state": values,
            "config": trajectory_settings(self.config),
            "best": best_record,
            "warnings": self.warnings,
        }
        path = self.ckpt.save(self.state.global_step, payload, tensors, best_tensors)
        self.last_saved_step = self.state.global_step
        logger.info("Saved checkpoint %s", path)
        return path

    def _maybe_resume(self) -> None:
        config = self.config
        path = Path(config.resume_from) if config.resume_from else None
        if path is None and config.resume:
            path = self.ckpt.latest()
            if path is None:
                logger.warning(
                    "--resume: no complete checkpoint in %s; starting from scratch.", self.ckpt.root
                )
        if path is None:
            return
        payload, tensors = self.ckpt.load(path)
        resume_schedule(self.scheduler, payload["scheduler"])
        restore_method_state(self.unwrapped, tensors, payload.get("method_state", {}))
        self.state = LoopState(**payload["loop"])
        self.warnings = list(payload.get("warnings") or [])
        if (
            self.best is not None
            and payload.get("best", {})
            and payload["best"].get("metric") == self.best.metric
        ):
            self.best.load_state(self.ckpt.load_best(path), payload["best"])
        if self.state.batches_in_epoch >= len(self.train_dl):
            self.state.epoch += 1
            self.state.batches_in_epoch = 0
        self.last_saved_step = self.state.global_step
        changed = changed_settings(payload, config, self.acc.num_processes)
        if changed:
            text = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            logger.warning("Resuming with settings that differ from the checkpoint (%s): they apply from step %d "
                           "on, so the run will not match an uninterrupted one.", text, self.state.global_step + 1)  # fmt: skip
        logger.info(
            "Resumed from %s at step %d (epoch %d, batch %d).",
            path, self.state.global_step, self.state.epoch, self.state.batches_in_epoch,
        )  # fmt: skip

    def _announce_stop(self, signal_name: str) -> None:
        logger.warning(
            "%s: stopped after optimizer step %d; checkpoint saved to %s. To continue, rerun the same command "
            "with --resume, e.g.: %s",
            signal_name, self.state.global_step, self.ckpt.latest(), resume_command(),
        )  # fmt: skip
