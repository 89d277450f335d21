"""Helpers shared by the quantised-base tests (no tests here): bases per family and precision, built-in methods."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

import peftkit
from tests.tiny_models import make_batch, model_device

#: Family -> (load_base task, num_labels, trained task head or None).
TASKS: dict[str, tuple[str, int | None, str | None]] = {
    "bert": ("token-classification", 5, "classifier"),
    "gpt2": ("sequence-classification", 3, "score"),
    "llama": ("causal-lm", None, None),  # the LM head is pretrained: frozen
}

#: Precision name -> load_base keyword arguments.
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"dtype": torch.bfloat16},
    "8bit": {"load_in_8bit": True},
    "8bit-bf16": {"load_in_8bit": True, "dtype": torch.bfloat16},
    "4bit": {"load_in_4bit": True},
}


def builtin_methods() -> list[str]:
    """The methods peftkit itself registers (plugins left out), so a new built-in joins every matrix."""
    return sorted(
        name
        for name in peftkit.methods()
        if peftkit.get_method(name).builder.__module__.startswith("peftkit.methods")
    )


def train_options(method: str, total_step: int = 20) -> dict[str, Any]:
    """The options a method cannot do without in a short run (AdaLoRA's ``total_step``)."""
    fields = {f.name for f in dataclasses.fields(peftkit.get_method(method).config_cls)}
    return {"total_step": total_step} if "total_step" in fields else {}


def load(path: str, family: str, precision: str, **kwargs: Any) -> nn.Module:
    """``peftkit.load_base`` of a tiny checkpoint for the family's task, in ``precision``."""
    task, num_labels, _ = TASKS[family]
    return peftkit.load_base(path, task=task, num_labels=num_labels, **PRECISIONS[precision], **kwargs)


def train(
    model: nn.Module, family: str, steps: int = 4, lr: float = 1e-2, eval_at: int | None = 2
) -> list[float]:
    """AdamW steps with peftkit's per-step hooks on a fixed batch; an eval forward after step ``eval_at``.

    The eval forward in the middle is what a training loop's evaluation does: on CPUs with AVX-512
    BF16, bitsandbytes repacks 4-bit weights there, and training forwards after it used to fail.
    """
    batch = make_batch(family, device=model_device(model))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        peftkit.on_optimizer_step(model, step)
        optimizer.zero_grad()
        losses.append(loss.item())
        if step == eval_at:
            model.eval()
            with torch.no_grad():
                model(**batch)
            model.train()
    model.eval()
    return losses


def logits(model: nn.Module, family: str) -> torch.Tensor:
    """Outputs on a fixed batch (no labels, no grad), as float32 on the CPU."""
    batch = make_batch(family, seed=3, device=model_device(model))
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits.float().cpu()


def quantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the integer (quantised) parameters, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if not p.is_floating_point()}


#: Where each precision's adapter is reloaded in :func:`train_save_move_merge`: always another precision.
MOVE_TO = {"fp32": "8bit", "bf16": "4bit", "8bit": "fp32", "4bit": "bf16"}


def _delta_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flattened tensors (1 = the same direction)."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def train_save_move_merge(
    path: str, family: str, precision: str, method: str, device: str, out: Path
) -> dict[str, float]:
    """One cell of the device x precision x method matrix (the CUDA tests run it on ``cuda``).

    Trains a few steps on ``device``; saves; reloads onto the same precision (same logits, up to
    bf16 rounding where the compute dtype is bf16); reloads onto another precision (:data:`MOVE_TO`),
    where the adapter must change the outputs the way it changed them on its own base (cosine
    similarity of the two changes > 0.8: quantisation moves the base's outputs, so they cannot be
    equal); and, for a mergeable method, merges it into the full-precision base on ``device``, which
    must give the adapter model's logits there. Returns the measured figures.
    """
    where = {"device_map": {"": device}}
    model = peftkit.wrap(load(path, family, precision, **where), method, **train_options(method))
    assert all(p.device.type == torch.device(device).type for p in model.parameters())
    losses = train(model, family)
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0], losses
    expected = logits(model, family)
    scale = expected.abs().max().item()
    untrained = logits(load(path, family, precision, **where).eval(), family)
    peftkit.save_adapter(model, out)

    again = logits(peftkit.load_adapter(load(path, family, precision, **where).eval(), out), family)
    half = precision in ("bf16", "4bit")
    same = (again - expected).abs().max().item()
    # CPU: 0 except AdaLoRA in bf16 (truncated ranks round differently: < 2**-7 of the scale); the
    # CUDA bound leaves room for kernels that may pick another reduction order between two loads.
    limit = (2**-6 if half else 1e-3) * scale
    assert same <= limit, f"reload on {precision}: {same:.3g} (scale {scale:.3g})"

    other = MOVE_TO[precision]
    moved = logits(peftkit.load_adapter(load(path, family, other, **where).eval(), out), family)
    other_base = logits(load(path, family, other, **where).eval(), family)
    agreement = _delta_agreement(moved - other_base, expected - untrained)
    assert agreement > 0.8, f"{precision} -> {other}: the adapter's effect changed (cosine {agreement:.3f})"

    merged_error = float("nan")
    if peftkit.get_method(method).mergeable:
        from peftkit.merge import merge_adapter

        merged = merge_adapter(load(path, family, "fp32", **where), out)
        reference = logits(peftkit.load_adapter(load(path, family, "fp32", **where).eval(), out), family)
        merged_error = (logits(merged.eval(), family) - reference).abs().max().item()
        assert merged_error <= 1e-4 * max(1.0, reference.abs().max().item()), merged_error
    return {"reload": same, "agreement": agreement, "merged_error": merged_error, "scale": scale}
