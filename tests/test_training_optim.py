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


@pytest.mark.parametrize("method", ["lora", "full"])
def test_head_lr_applies_to_the_task_head_only_and_the_schedule_scales_both(method):
    from peftkit.training import build_scheduler

    torch.manual_seed(0)
    model = make_model("bert")
    model = peftkit.wrap(model, "lora") if method == "lora" else model.requires_grad_(True)
    config = TrainConfig(lr=1e-3, head_lr=2e-2, weight_decay=0.01, warmup_steps=2)
    optimizer = build_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        in_head = {names[id(p)].startswith("classifier.") for p in group["params"]}
        assert in_head == {group["lr"] == 2e-2}, group["lr"]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        p.requires_grad for p in model.parameters()
    )
    scheduler = build_scheduler(optimizer, config, total_steps=10)
    optimizer.step(), scheduler.step()
    assert [round(r, 8) for r in scheduler.get_last_lr()] == [
        round(g["initial_lr"] * 2 / 3, 8) for g in optimizer.param_groups
    ]  # step 1 of a 2-step warm-up, for every group alike


def test_head_lr_without_a_trainable_head_is_refused():
    torch.manual_seed(0)
    model = make_model("bert").requires_grad_(False)
    model.get_submodule("bert.embeddings.LayerNorm").weight.requires_grad_(True)
    with pytest.raises(TrainingError, match=r"head_lr=0.01 but the model has no trainable task head"):
        build_optimizer(model, TrainConfig(head_lr=1e-2))
