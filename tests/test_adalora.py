"""AdaLoRA's budget schedule runs through peftkit.on_optimizer_step, with no manual peft call."""

from __future__ import annotations

import torch

import peftkit
from peftkit.state import get_state
from tests.tiny_models import make_batch, make_model


def _train(model, steps: int, family: str = "bert") -> None:
    batch = make_batch(family)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for step in range(1, steps + 1):
        model(**batch).loss.backward()
        optimizer.step()
        peftkit.on_optimizer_step(model, step)
        optimizer.zero_grad()


def test_ranks_are_reallocated_after_total_step() -> None:
    model = peftkit.wrap(
        make_model("bert"), "adalora", total_step=12, tinit=2, tfinal=3, init_r=6, target_r=2
    )
    handle = get_state(model).adapters["default"].handle
    assert handle.peft_config.rank_pattern is None
    _train(model, 12)
    pattern = handle.peft_config.rank_pattern
    assert pattern, "no rank pattern recorded"
    kept = [sum(mask) for mask in pattern.values()]
    assert len(kept) == 4  # query and value in 2 layers
    assert sum(kept) == 2 * 4  # the budget: target_r per module on average
    assert all(len(mask) == 6 for mask in pattern.values())
    # masked singular values are zero
    for name, module in model.named_modules():
        if hasattr(module, "lora_E") and "default" in module.lora_E:
            key = next(k for k in pattern if k.startswith(name))
            mask = torch.tensor(pattern[key])
            assert torch.all(module.lora_E["default"].detach().squeeze(-1)[~mask] == 0)


def test_budget_hook_is_a_no_op_for_other_methods_and_plain_models() -> None:
    peftkit.on_optimizer_step(make_model("gpt2"), 1)
    model = peftkit.wrap(make_model("gpt2"), "lora")
    peftkit.on_optimizer_step(model, 1)
