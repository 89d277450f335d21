"""wrap() on the {bert, gpt2, llama} x {lora, adalora, adapter} matrix."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.state import adapter_parameters
from tests.tiny_models import make_batch, make_model

METHODS = ["lora", "adalora", "adapter"]
OPTIONS = {"lora": {}, "adalora": {"total_step": 20}, "adapter": {}}
HEAD = {"bert": "classifier", "gpt2": "score", "llama": None}
METHOD_PARAM_MARKERS = {
    "lora": ("lora_A", "lora_B"),
    "adalora": ("lora_A", "lora_B", "lora_E"),
    "adapter": ("adapter_",),
}


def _wrapped(family: str, method: str, **extra):
    return peftkit.wrap(make_model(family), method, **{**OPTIONS[method], **extra})


@pytest.mark.parametrize("method", METHODS)
def test_only_method_and_head_parameters_are_trainable(family: str, method: str) -> None:
    model = _wrapped(family, method)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trainable"
    head = HEAD[family]
    for name in trainable:
        is_method = any(marker in name for marker in METHOD_PARAM_MARKERS[method])
        is_head = head is not None and name.startswith(f"{head}.modules_to_save.default.")
        assert is_method or is_head, f"unexpected trainable parameter {name}"
    if head is not None:
        assert any(name.startswith(f"{head}.modules_to_save.default.") for name in trainable)
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n.startswith(head))
    else:  # the LM head of a causal LM stays frozen
        assert not any(name.startswith("lm_head") for name in trainable)
    assert set(adapter_parameters(model, "default")) >= trainable


@pytest.mark.parametrize("method", METHODS)
def test_outputs_at_step_zero_equal_the_base_model(family: str, method: str) -> None:
    batch = make_batch(family)
    base_logits = make_model(family)(**batch).logits
    model = _wrapped(family, method)
    assert type(model) is type(make_model(family))
    torch.testing.assert_close(model(**batch).logits, base_logits)


@pytest.mark.parametrize("method", METHODS)
def test_one_step_lowers_loss_and_leaves_frozen_weights_alone(family: str, method: str) -> None:
    model = _wrapped(family, method)  # eval mode: dropout off, so the loss is deterministic
    batch = make_batch(family)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_before = model(**batch).loss
    loss_before.backward()
    optimizer.step()
    peftkit.on_optimizer_step(model, 1)
    with torch.no_grad():
        loss_after = model(**batch).loss
    assert loss_after < loss_before
    for name, param in model.named_parameters():
        if name in frozen:
            torch.testing.assert_close(param, frozen[name], rtol=0, atol=0, msg=f"{name} changed")


def test_wrap_returns_same_object_and_forward(family: str) -> None:
    model = make_model(family)
    forward = type(model).forward
    assert peftkit.wrap(model, "lora") is model
    assert type(model).forward is forward


def test_target_modules_override(family: str) -> None:
    targets = {"bert": ["key"], "gpt2": ["c_fc"], "llama": ["k_proj"]}[family]
    model = peftkit.wrap(make_model(family), "lora", target_modules=targets)
    names = [n for n in adapter_parameters(model, "default") if ".lora_A." in n]
    assert {n.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for n in names} == set(targets)
    assert len(names) == 2  # one per transformer block


def test_regex_target_modules_restricts_to_one_layer() -> None:
    model = peftkit.wrap(make_model("bert"), "lora", target_modules=r".*layer\.0\.attention\.self\.query")
    names = [n for n in adapter_parameters(model, "default") if "lora_A" in n]
    assert names == ["bert.encoder.layer.0.attention.self.query.lora_A.default.weight"]


@pytest.mark.parametrize(
    ("placement", "per_layer"),
    [("houlsby", 2), ("pfeiffer", 1)],
)
def test_adapter_placement(family: str, placement: str, per_layer: int) -> None:
    from peftkit.methods.adapter.layer import AdapterLayer

    model = peftkit.wrap(make_model(family), "adapter", placement=placement, reduction_factor=8)
    layers = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    assert len(layers) == 2 * per_layer  # two transformer blocks
    if placement == "pfeiffer":
        assert all("attn" not in n and "attention" not in n for n in layers)
    down = next(m for m in model.modules() if isinstance(m, AdapterLayer)).adapter_down["default"]
    assert down.out_features == 32 // 8


def test_adapter_learns_with_gelu_layer_norm_and_dropout() -> None:
    model = peftkit.wrap(make_model("bert"), "adapter", non_linearity="gelu", layer_norm=True, dropout=0.1)
    model.train()
    batch = make_batch("bert")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_adalora_adds_orthogonal_regulariser_in_training_only() -> None:
    model = _wrapped("bert", "adalora", dropout=0.0, orth_reg_weight=1.0)
    batch = make_batch("bert")
    for module in model.modules():  # disable the backbone's dropout, keep training mode
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    eval_loss = model.eval()(**batch).loss
    train_loss = model.train()(**batch).loss
    assert train_loss > eval_loss + 1e-3


def test_multiple_adapters_switch_and_disable() -> None:
    batch = make_batch("bert")
    base_logits = make_model("bert")(**batch).logits
    model = peftkit.wrap(make_model("bert"), "lora", adapter_name="a")
    peftkit.add_adapter(model, "lora", adapter_name="b", r=4)
    assert peftkit.active_adapter(model) == "b"
    with torch.no_grad():
        for name, param in adapter_parameters(model, "b").items():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.1)
    logits_b = model(**batch).logits
    assert not torch.allclose(logits_b, base_logits)
    peftkit.set_active(model, "a")
    torch.testing.assert_close(model(**batch).logits, base_logits)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".a." in n or n.endswith(".a") for n in trainable)
    peftkit.set_active(model, "b")
    with peftkit.adapters_disabled(model):
        torch.testing.assert_close(model(**batch).logits, base_logits)
    torch.testing.assert_close(model(**batch).logits, logits_b)
    peftkit.disable_adapters(model)
    torch.testing.assert_close(model(**batch).logits, base_logits)
    peftkit.enable_adapters(model)
    torch.testing.assert_close(model(**batch).logits, logits_b)


@pytest.mark.parametrize("method", METHODS)
def test_head_is_trained_in_fp32_on_a_bfloat16_base(method: str) -> None:
    base = make_model("bert").to(torch.bfloat16)
    batch = make_batch("bert")
    with torch.no_grad():
        expected = base(**batch).logits
    model = peftkit.wrap(base, method, **OPTIONS[method])
    head = model.classifier
    assert head.original_module.weight.dtype == torch.bfloat16, "the base's own head is untouched"
    assert all(p.dtype == torch.float32 and p.requires_grad for p in head.modules_to_save.parameters())
    out = model(**batch)
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits.detach(), expected.float(), atol=2e-2, rtol=2e-2)  # bf16 rounding
    out.loss.backward()
    assert head.modules_to_save["default"].weight.grad.dtype == torch.float32


@pytest.mark.parametrize("method", ["lora", "adalora", "ia3"])
def test_targets_inside_a_head_are_left_to_the_head(method: str) -> None:
    # "dense" also matches the last layer's output.dense, which is part of a head here (as BERT's
    # pooler is in the sentiment recipe): the head trains in full, its original gets no adapter
    # weights, and every trainable parameter gets a gradient (AdaLoRA's budget step needs them all).
    model = make_model("bert")
    head = "bert.encoder.layer.1.output"
    options = {"adalora": {"total_step": 10}}.get(method, {})
    wrapped = peftkit.wrap(
        model, method, target_modules=["dense"], head_modules=["classifier", head], **options
    )
    batch = make_batch("bert", device=wrapped.device)
    wrapped.train()
    wrapped(**batch).loss.backward()
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    assert not [n for n in trainable if n.startswith(head) and "modules_to_save" not in n]
    assert any(n.startswith("bert.encoder.layer.0.output.dense.") for n in trainable)
    if method == "adalora":
        peftkit.on_optimizer_step(wrapped, 1)  # peft's rank allocator reads every gradient


@pytest.mark.parametrize("method", ["adapter", "parallel"])
def test_a_second_adapter_leaves_the_heads_trained_copies_alone(method: str) -> None:
    # Once the head is wrapped, its trained copy (modules_to_save.default...) also matches "dense":
    # the second adapter must not put its layers inside the first adapter's head copy.
    from peft.tuners.tuners_utils import BaseTunerLayer

    head = "bert.encoder.layer.1.output"
    options = {"target_modules": ["dense"]} if method == "adapter" else {}
    model = peftkit.wrap(make_model("bert"), method, head_modules=["classifier", head], **options)
    peftkit.add_adapter(model, method, adapter_name="second", head_modules=["classifier", head], **options)
    inside_head = [
        n for n, m in model.named_modules() if n.startswith(head + ".") and isinstance(m, BaseTunerLayer)
    ]
    assert inside_head == []
    assert any(
        isinstance(m, BaseTunerLayer)
        for n, m in model.named_modules()
        if n.startswith("bert.encoder.layer.0.")
    )
