"""Every method trains on 8-bit and 4-bit (NF4) bases of every family and reloads; adapters move between
4-bit, 8-bit and full-precision bases; a 4-bit-trained adapter merges into the full-precision base.

Device-agnostic: on a CUDA machine ``load_base`` puts quantised bases on ``cuda:0`` and every input
follows the model's device (:func:`tests.tiny_models.model_device`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import peftkit
from peftkit.quantization import is_quantized
from tests.quantized_support import (
    TASKS,
    builtin_methods,
    load,
    logits,
    quantized_weights,
    train,
    train_options,
)
from tests.tiny_models import FAMILIES

pytest.importorskip("bitsandbytes")

METHODS = builtin_methods()
MERGEABLE = [m for m in METHODS if peftkit.get_method(m).mergeable]


def reload_tolerance(method: str, precision: str, scale: float) -> dict[str, float]:
    """How close a reloaded adapter's logits must be to the trained model's.

    Exact (float32 round-off) except AdaLoRA with a bfloat16 compute dtype (4-bit bases): its file keeps
    only the ranks the budget kept, and the shorter sum rounds differently in float32, which a bf16
    hidden state turns into at most a couple of bf16 steps (2**-8 relative) of the logits.
    """
    if precision == "4bit" and method == "adalora":
        return {"rtol": 0.0, "atol": 2**-6 * scale}
    return {}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["8bit", "4bit"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_reloads_on_a_quantized_base(
    tiny_model_dir, tmp_path: Path, family: str, precision: str, method: str
) -> None:
    path = tiny_model_dir(family)
    model = peftkit.wrap(load(path, family, precision), method, **train_options(method))
    assert is_quantized(model)
    head = TASKS[family][2]
    if head is not None:  # the trained head copy: fp32 and trainable whatever the compute dtype
        copies = {n: p for n, p in model.named_parameters() if n.startswith(f"{head}.modules_to_save")}
        assert copies and all(p.dtype == torch.float32 and p.requires_grad for p in copies.values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    before = quantized_weights(model)
    assert before, "no integer weights: the base was not quantised"

    losses = train(model, family)  # with an eval forward between training steps
    assert losses[-1] < losses[0]
    for name, weight in quantized_weights(model).items():
        assert torch.equal(weight, before[name]), f"quantised weight {name} changed"

    expected = logits(model, family)
    peftkit.save_adapter(model, tmp_path / "adapter")
    reloaded = peftkit.load_adapter(load(path, family, precision).eval(), tmp_path / "adapter")
    got = logits(reloaded, family)
    assert_close(got, expected, **reload_tolerance(method, precision, expected.abs().max().item()))


@pytest.mark.parametrize("source", ["4bit", "8bit", "fp32"])
@pytest.mark.parametrize("method", METHODS)
def test_adapters_move_between_4bit_8bit_and_full_precision_bases(
    tiny_model_dir, tmp_path: Path, method: str, source: str
) -> None:
    """Trained on one base, the adapter loads onto the others (same fingerprint); logits agree within quantisation error.

    The tolerance: NF4 and int8 round each weight by a few per cent of its block's / row's absmax;
    through two tiny layers that moves logits by about 1-2% of their scale, so we allow 5% (a missing
    or wrong adapter moves them by far more: checked against the untrained base).
    """
    family, path = "bert", tiny_model_dir("bert")
    trained = peftkit.wrap(load(path, family, source), method, **train_options(method))
    train(trained, family, steps=6)
    expected = logits(trained, family)
    peftkit.save_adapter(trained, tmp_path / "adapter")
    scale = expected.abs().max().item()
    for target in {"4bit", "8bit", "fp32"} - {source}:
        moved = peftkit.load_adapter(load(path, family, target).eval(), tmp_path / "adapter")
        untrained = load(path, family, target).eval()
        assert (logits(moved, family) - expected).abs().max().item() <= 0.05 * scale, target
        assert (logits(untrained, family) - expected).abs().max().item() > 0.05 * scale  # the adapter matters


@pytest.mark.parametrize("method", MERGEABLE)
def test_an_adapter_trained_on_a_4bit_base_merges_into_the_full_precision_base(
    tiny_model_dir, tmp_path: Path, method: str
) -> None:
    """``peftkit merge --base <fp32 checkpoint>`` of a 4-bit-trained adapter equals that adapter on the fp32 base."""
    from transformers import AutoModelForTokenClassification

    from peftkit.cli import main

    path = tiny_model_dir("bert")
    trained = peftkit.wrap(load(path, "bert", "4bit"), method, **train_options(method))
    train(trained, "bert", steps=6)
    peftkit.save_adapter(trained, tmp_path / "adapter")
    argv = [
        "merge",
        "--base",
        path,
        "--adapter",
        str(tmp_path / "adapter"),
        "--out",
        str(tmp_path / "merged"),
    ]
    assert main(argv) == 0
    merged = AutoModelForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters()) and not is_quantized(merged)
    on_fp32 = peftkit.load_adapter(load(path, "bert", "fp32").eval(), tmp_path / "adapter")
    assert_close(logits(merged, "bert"), logits(on_fp32, "bert"), rtol=1e-5, atol=1e-5)
    assert (logits(merged, "bert") - logits(trained, "bert")).abs().max() <= 0.05 * logits(
        trained, "bert"
    ).abs().max()  # NF4 rounding only
