"""Keep the weights of the best evaluation (``select_best``) and notice evaluations that learned nothing.

With ``config.select_best = "f1"`` (any key that ``compute_metrics`` returns, maximised) the loop
calls :meth:`BestKeeper.update` after every evaluation. A better value takes a CPU copy of what a
trainable-only checkpoint stores (trainable parameters, persistent buffers) and of the adapter
methods' extra state (AdaLoRA's rank pattern, see :mod:`.method_state`); the earliest evaluation
wins ties. When training ends the loop puts the best copy back into the model, so the adapter a
recipe saves, and the test score it reports, are those of the best evaluation, and logs which
step was kept. Checkpoints carry the copy (``best.safetensors``) and its record, so ``--resume``
selects exactly as an uninterrupted run.

Single-class evaluations: ``compute_metrics`` may return :data:`PREDICTED_CLASSES`, the number of
distinct classes the model predicted over the evaluation set. When it is 1, the model gives every
example the same class (typically the majority class: a run that learned nothing) and
:func:`single_class_warning` says so in one log line, which the loop also keeps in
``TrainResult.warnings``.

Data flow::

    evaluate() -> metrics --update()--> better? copy trainable state (CPU) + method state
    end of training --restore()--> model holds the best evaluation's weights --> TrainResult.best
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from peftkit.errors import TrainingError
from peftkit.training.checkpoint import trainable_state_names
from peftkit.training.method_state import collect_method_state, restore_method_state

#: Metric key ``compute_metrics`` may return: distinct classes predicted over the evaluation set.
PREDICTED_CLASSES = "predicted_classes"
_MODEL, _METHOD = "model::", "method::"


def single_class_warning(metrics: dict[str, Any], step: int, epoch: float) -> str | None:
    """The warning for an evaluation whose predictions are all one class, else ``None``.

    Example:
        >>> single_class_warning({"f1": 0.0, "predicted_classes": 1}, 60, 1.0)[:40]
        'Evaluation at step 60 (epoch 1.00): the '

    """
    if metrics.get(PREDICTED_CLASSES) != 1:
        return None
    return (
        f"Evaluation at step {step} (epoch {epoch:.2f}): the model predicts a single class for every "
        "evaluation example, so it has learned nothing beyond the most frequent class. Start the task "
        "head's bias at the class frequencies (the NER recipe's --head-bias prior), raise the head's "
        "learning rate (--head-lr), train longer, or check the labels."
    )


@dataclasses.dataclass
class BestRecord:
    """Which evaluation is the best so far.

    Attributes:
        metric: The metric maximised.
        value: Its best value.
        step: Optimizer step of that evaluation.
        epoch: Epoch of that evaluation (completed epochs, fractional mid-epoch).
        metrics: All metrics of that evaluation.

    """

    metric: str
    value: float
    step: int
    epoch: float
    metrics: dict[str, Any]


class BestKeeper:
    """Track the best evaluation by ``metric`` and hold a copy of the model state it had.

    Args:
        metric: Key of the evaluation metrics to maximise.
        model: The unwrapped model whose trainable state is copied and restored.

    """

    def __init__(self, metric: str, model: nn.Module) -> None:
        self.metric = metric
        self.model = model
        self.best: BestRecord | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        self._method_values: dict[str, Any] = {}

    def update(self, metrics: dict[str, Any], step: int, epoch: float) -> bool:
        """Copy the model state if ``metrics[metric]`` beats the best so far; return whether it did.

        Raises:
            TrainingError: The metrics have no ``metric`` (the message lists those they have).

        """
        if self.metric not in metrics:
            raise TrainingError(
                f"select_best={self.metric!r} is not among the evaluation metrics "
                f"({', '.join(sorted(metrics))}): pass one of them, e.g. --select-best {next(iter(metrics), 'f1')}."
            )
        value = float(metrics[self.metric])
        if math.isnan(value) or (self.best is not None and value <= self.best.value):
            return False
        self.best = BestRecord(self.metric, value, step, round(epoch, 4), dict(metrics))
        self._tensors, self._method_values = self._snapshot()
        return True

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        names = trainable_state_names(self.model)
        tensors = {
            _MODEL + name: tensor.detach().to("cpu", copy=True).contiguous()
            for name, tensor in self.model.state_dict().items()
            if name in names
        }
        method_tensors, values = collect_method_state(self.model)
        tensors.update({_METHOD + key: t.clone() for key, t in method_tensors.items()})
        return tensors, values

    def restore(self) -> BestRecord | None:
        """Load the best evaluation's state into the model (nothing before any evaluation)."""
        if self.best is None:
            return None
        model_state = {k[len(_MODEL) :]: v for k, v in self._tensors.items() if k.startswith(_MODEL)}
        method_state = {k[len(_METHOD) :]: v for k, v in self._tensors.items() if k.startswith(_METHOD)}
        self.model.load_state_dict(model_state, strict=False)
        restore_method_state(self.model, method_state, self._method_values)
        return self.best

    # ------------------------------------------------------------------------------------------
    # checkpoints

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        """``(tensors, record)`` to store in a checkpoint (``({}, None)`` before any evaluation)."""
        if self.best is None:
            return {}, None
        return self._tensors, {**dataclasses.asdict(self.best), "method_values": self._method_values}

    def load_state(self, tensors: dict[str, torch.Tensor], record: dict[str, Any] | None) -> None:
        """Take back what :meth:`state` returned (from a checkpoint)."""
        if record is None:
            self.best, self._tensors, self._method_values = None, {}, {}
            return
        record = dict(record)
        self._method_values = record.pop("method_values", {})
        self.best = BestRecord(**record)
        self._tensors = dict(tensors)
