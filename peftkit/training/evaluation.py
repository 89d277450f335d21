"""Distributed evaluation: per-batch outputs gathered over processes, metrics over the whole set.

The recipe supplies two functions:

* ``eval_step(model, batch) -> Mapping[str, Tensor]``, run on every process for every batch,
  returning tensors whose first dimension is the batch (e.g. ``{"predictions":
  logits.argmax(-1), "labels": batch["labels"]}``). Smaller is faster: gather predictions, not
  logits, when that suffices.
* ``compute_metrics(outputs: dict[str, list[Tensor]]) -> dict[str, float]``, run once on the
  gathered outputs of the whole evaluation set (on every process, with identical inputs).

Tensors with a second dimension (sequences) are padded to the same length on every process
with ``pad_index`` (-100 by default, so padded label positions look like ignored tokens) before
``accelerator.gather_for_metrics``, which drops the samples Accelerate duplicated to give every
process the same number of batches. Each sample of the evaluation set therefore appears exactly
once, in order, whatever the number of processes. Widths still differ between batches, so
``outputs[key]`` is a list with one tensor per batch; :func:`concat_padded` joins them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

EvalStep = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
ComputeMetrics = Callable[[dict[str, list[torch.Tensor]]], dict[str, float]]


def loss_eval_step(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """Default ``eval_step``: the batch's mean loss, repeated once per sample."""
    outputs = model(**batch)
    loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs.loss
    size = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    return {"loss": loss.detach().float().reshape(1).expand(size)}


def loss_metrics(outputs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Default ``compute_metrics``: ``{"eval_loss": mean of the per-sample losses}``."""
    return {"eval_loss": torch.cat(outputs["loss"]).mean().item()}


def concat_padded(tensors: list[torch.Tensor], pad_index: int = -100) -> torch.Tensor:
    """Concatenate per-batch tensors along dim 0, right-padding dim 1 to the widest batch.

    Example:
        >>> concat_padded([torch.tensor([[1, 2]]), torch.tensor([[3]])]).tolist()
        [[1, 2], [3, -100]]

    """
    if not tensors:
        return torch.empty(0, device="cpu")
    if tensors[0].dim() < 2:
        return torch.cat(tensors)
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        if t.shape[1] < width:
            pad = t.new_full((t.shape[0], width - t.shape[1], *t.shape[2:]), pad_index)
            t = torch.cat([t, pad], dim=1)
        padded.append(t)
    return torch.cat(padded)


def evaluate(
    model: nn.Module,
    dataloader: Any,
    accelerator: Accelerator,
    eval_step: EvalStep | None = None,
    compute_metrics: ComputeMetrics | None = None,
    *,
    pad_index: int = -100,
) -> dict[str, float]:
    """Run ``eval_step`` on every batch of a prepared dataloader and compute metrics over the whole set.

    Evaluation runs under ``torch.no_grad`` with the model in eval mode (its previous mode is
    restored) and leaves the torch random state untouched, so evaluating does not change the
    training that follows.

    Args:
        model: The prepared model.
        dataloader: A dataloader prepared by ``accelerator`` (needed for deduplication).
        accelerator: The run's accelerator.
        eval_step: Per-batch function (default: :func:`loss_eval_step`).
        compute_metrics: Whole-set function (default: :func:`loss_metrics`).
        pad_index: Padding value for sequence outputs of different lengths across processes.

    Returns:
        The metrics, identical on every process.

    """
    eval_step = eval_step or loss_eval_step
    compute_metrics = compute_metrics or loss_metrics
    was_training = model.training
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for batch in dataloader:
                outputs = dict(eval_step(model, batch))
                for key, value in outputs.items():
                    if value.dim() > 1:
                        outputs[key] = accelerator.pad_across_processes(value, dim=1, pad_index=pad_index)
                gathered = accelerator.gather_for_metrics(outputs)
                for key, value in gathered.items():
                    collected.setdefault(key, []).append(value.detach().cpu())
    finally:
        model.train(was_training)
    return compute_metrics(collected)
