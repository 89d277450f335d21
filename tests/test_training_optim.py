"""Optimizer set-up: AdamW over the trainable parameters, no weight decay on biases and norms."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.config import TrainConfig
from peftkit.errors import TrainingError
from peftkit.training import build_optimizer
from tests.tiny_models import make_model


def test_no_decay_for_biases_and_norms_and_frozen_weights_left_out():
    torch.manual_seed(0)
    model = peftkit.wrap(make_model("bert"), "lora")
    model.get_submodule("bert.embeddings.LayerNorm").weight.requires_grad_(True)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.01))
    names = {id(p): n for n, p in model.named_parameters()}
    optimised = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    assert sorted(optimised) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            no_decay = name.endswith("bias") or "LayerNorm" in name
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name


def test_a_model_with_nothing_to_train_is_refused():
    model = make_model("bert").requires_grad_(False)
    with pytest.raises(TrainingError, match=r"no trainable parameter: wrap it first"):
        build_optimizer(model, TrainConfig())
