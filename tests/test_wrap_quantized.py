"""All three methods train on an 8-bit (bitsandbytes) base; adapters move between 8-bit and fp32 bases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftkit
from tests.tiny_models import make_batch

pytest.importorskip("bitsandbytes")

TASKS = {"bert": ("token-classification", 5), "gpt2": ("sequence-classification", 3)}
OPTIONS = {"lora": {}, "adalora": {"total_step": 20}, "adapter": {}}
HEADS = {"bert": "classifier", "gpt2": "score"}


def _load(path: str, family: str, load_in_8bit: bool):
    task, num_labels = TASKS[family]
    return peftkit.load_base(path, task=task, num_labels=num_labels, load_in_8bit=load_in_8bit)


def _train(model, family: str, steps: int = 6) -> list[float]:
    batch = make_batch(family)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        peftkit.on_optimizer_step(model, step)
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "adalora", "adapter"])
def test_methods_train_on_an_8bit_base(tiny_model_dir, family: str, method: str) -> None:
    model = peftkit.wrap(_load(tiny_model_dir(family), family, True), method, **OPTIONS[method])
    assert peftkit.quantization.is_quantized(model)
    head = HEADS[family]
    head_params = {n: p for n, p in model.named_parameters() if n.startswith(f"{head}.modules_to_save")}
    assert head_params and all(p.dtype == torch.float32 and p.requires_grad for p in head_params.values())
    int8_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.int8}
    assert int8_before, "no int8 weights: the base was not quantised"
    losses = _train(model, family)
    assert losses[-1] < losses[0]
    for name, param in model.named_parameters():
        if name in int8_before:
            assert torch.equal(param, int8_before[name]), f"quantised weight {name} changed"


@pytest.mark.parametrize("method", ["lora", "adalora", "adapter"])
def test_adapter_moves_between_8bit_and_fp32_bases(tiny_model_dir, tmp_path: Path, method: str) -> None:
    """An adapter trained on either base loads onto the other; logits agree within int8 error.

    The tolerance: absmax row-wise int8 quantisation rounds each weight by at most
    ``max|row| / 254``; through two tiny layers that moves logits by ~1e-2 of their scale, so
    we allow 5% of the logit range (a wrong or missing adapter moves them by far more).
    """
    family, path = "bert", tiny_model_dir("bert")
    batch = make_batch(family)
    for train_8bit in (True, False):
        trained = peftkit.wrap(_load(path, family, train_8bit), method, **OPTIONS[method])
        _train(trained, family)
        out = tmp_path / f"{method}-{train_8bit}"
        peftkit.save_adapter(trained, out)
        with torch.no_grad():
            expected = trained(**batch).logits
            other = peftkit.load_adapter(_load(path, family, not train_8bit), out)
            got = other(**batch).logits
            untrained = _load(path, family, not train_8bit)(**batch).logits
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= 0.05 * scale
        assert (untrained - expected).abs().max().item() > 0.05 * scale  # the adapter matters


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "adalora", "adapter"])
def test_adapter_reloads_exactly_onto_an_8bit_base(
    tiny_model_dir, tmp_path: Path, family: str, method: str
) -> None:
    path = tiny_model_dir(family)
    trained = peftkit.wrap(_load(path, family, True), method, **OPTIONS[method])
    _train(trained, family, steps=3)
    peftkit.save_adapter(trained, tmp_path / "adapter")
    batch = make_batch(family)
    with torch.no_grad():
        expected = trained(**batch).logits
        got = peftkit.load_adapter(_load(path, family, True).eval(), tmp_path / "adapter")(**batch).logits
    torch.testing.assert_close(got, expected)
