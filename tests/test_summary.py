"""summary() numbers equal a hand count."""

from __future__ import annotations

import peftkit
from tests.tiny_models import make_model

HIDDEN, LAYERS, LABELS = 32, 2, 5


def test_lora_summary_matches_hand_count() -> None:
    base_total = sum(p.numel() for p in make_model("bert").parameters())
    model = peftkit.wrap(make_model("bert"), "lora", r=4)
    report = peftkit.summary(model)
    lora = LAYERS * 2 * (4 * HIDDEN + HIDDEN * 4)  # query and value: A (r x in) + B (out x r)
    head = HIDDEN * LABELS + LABELS  # trainable copy of the classifier
    assert report.by_kind == {"backbone": base_total, "lora:default": lora, "head": head}
    assert report.trainable == lora + head
    assert report.total == base_total + lora + head
    assert "lora:default" in str(report)


def test_adapter_summary_matches_hand_count() -> None:
    model = peftkit.wrap(make_model("gpt2"), "adapter", placement="pfeiffer", reduction_factor=4)
    bottleneck = HIDDEN // 4
    per_adapter = (HIDDEN * bottleneck + bottleneck) + (bottleneck * HIDDEN + HIDDEN)
    head = HIDDEN * 3  # GPT-2 score head has no bias
    report = peftkit.summary(model)
    assert report.trainable_by_kind["adapter:default"] == LAYERS * per_adapter
    assert report.trainable_by_kind["head"] == head
    assert report.trainable_by_kind["backbone"] == 0


def test_summary_of_plain_model() -> None:
    model = make_model("llama")
    report = peftkit.summary(model)
    assert report.trainable == report.total == sum(p.numel() for p in model.parameters())
