"""Helpers shared by the adapter-file tests (no tests here): briefly trained tiny adapters."""

from __future__ import annotations

import torch
from torch import nn

import peftkit
from tests.tiny_models import make_batch, make_model, model_device

METHODS = ("lora", "adalora", "adapter")
#: AdaLoRA: 4 of 6 steps trained, so its budget has pruned ranks (rank_pattern set) before saving.
METHOD_OPTIONS = {
    "lora": {"r": 4},
    "adalora": {"total_step": 6, "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 1},
    "adapter": {"reduction_factor": 4, "layer_norm": True},
}


def train_briefly(model: nn.Module, family: str, steps: int = 4, lr: float = 1e-2) -> nn.Module:
    """A few optimizer steps (with peftkit's per-step hooks), then eval mode."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    batch = make_batch(family, device=model_device(model))
    for step in range(1, steps + 1):
        model(**batch).loss.backward()
        optimizer.step()
        peftkit.on_optimizer_step(model, step)
        optimizer.zero_grad()
    return model.eval()


def trained(family: str, method: str, seed: int = 0, adapter_seed: int = 0, **options) -> nn.Module:
    """A tiny ``family`` model (base seed ``seed``) with a briefly trained ``method`` adapter."""
    model = make_model(family, seed)
    torch.manual_seed(100 + adapter_seed)
    peftkit.wrap(model, method, **{**METHOD_OPTIONS[method], **options})
    return train_briefly(model, family)


def logits(model: nn.Module, family: str) -> torch.Tensor:
    """Outputs on a fixed evaluation batch (no labels, no grad), on the CPU whatever the model's device."""
    batch = make_batch(family, seed=3, device=model_device(model))
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits.cpu()
