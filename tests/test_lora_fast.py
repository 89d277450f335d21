"""LoRA's fast path (peftkit/methods/lora/fast.py) computes what peft's LoRA computes; so does AdaLoRA's.

Each comparison builds one wrapped model, gives the B matrices (and AdaLoRA's E vectors) non-zero
values (at B = 0 the gradients of A vanish and prove nothing), copies it, switches the copy back
to peft's own layer class, and runs both on the same inputs from the same random state: outputs, the gradients of
every A and B, and the gradient of the input embeddings must match. Where the fast path cannot
apply (merged layers, disabled adapters, several active adapters, DoRA, autocast, 8-bit bases)
the layer must take peft's forward, so the numbers match there too.
"""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
from peft import PeftModel
from torch import nn

import peftkit
from peftkit.merge.fold import fold_adapter
from peftkit.methods.adalora.fast import FastSVDLinear, enable_fast_adalora
from peftkit.methods.lora.fast import FastLoraLinear, enable_fast_lora, uses_fast_lora
from tests.tiny_models import FAMILIES, make_batch, make_model, save_tiny_model

#: Every linear layer of each tiny family's backbone (GPT-2's are Conv1D: fan_in_fan_out).
ALL_LINEAR = {
    "bert": ["query", "key", "value", "dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
FP32 = {"atol": 2e-5, "rtol": 2e-5}


def wrapped_pair(
    family: str, dtype: torch.dtype = torch.float32, dropout: float = 0.0, method: str = "lora", **options
) -> tuple[nn.Module, nn.Module]:
    """(fast, peft) copies of one LoRA- (or AdaLoRA-) wrapped tiny model, with random non-zero B (and E)."""
    torch.manual_seed(0)
    base = make_model(family).to(dtype)
    if method == "adalora":
        options = {"init_r": 4, "target_r": 2, "total_step": 20, **options}
    else:
        options = {"r": 4, "alpha": 8.0, **options}
    fast = peftkit.wrap(base, method, target_modules=ALL_LINEAR[family], dropout=dropout, **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in fast.named_parameters():
            if "lora_B" in name or "lora_E" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator).to(dtype))
    reference = copy.deepcopy(fast)
    switched = enable_fast_lora(reference, enabled=False) + enable_fast_adalora(reference, enabled=False)
    assert switched == count_fast(fast) > 0
    return fast.train(), reference.train()


def count_fast(model: nn.Module) -> int:
    return sum(uses_fast_lora(m) or isinstance(m, FastSVDLinear) for m in model.modules())


def run(model: nn.Module, family: str, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and d(loss)/d(input embeddings) from a fixed random state."""
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in make_batch(family).items()}
    embeddings = model.get_input_embeddings()(batch.pop("input_ids")).detach().requires_grad_(True)
    torch.manual_seed(seed)
    out = model(inputs_embeds=embeddings, **batch)
    (out.loss.float() + out.logits.float().square().mean()).backward()
    return out.logits.detach(), embeddings.grad


def lora_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


METHODS = ("lora", "adalora")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_matches_peft_forward_and_gradients_fp32(family: str, dropout: float, method: str) -> None:
    fast, reference = wrapped_pair(family, torch.float32, dropout, method)
    check_fast_path_runs(fast, torch.float32)
    logits, input_grad = run(fast, family)
    ref_logits, ref_input_grad = run(reference, family)
    torch.testing.assert_close(logits, ref_logits, **FP32)
    torch.testing.assert_close(input_grad, ref_input_grad, **FP32)
    grads, ref_grads = lora_grads(fast), lora_grads(reference)
    assert grads.keys() == ref_grads.keys() and len(grads) >= 2 * len(ALL_LINEAR[family])
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        scale = ref_grads[name].abs().max()
        torch.testing.assert_close(grad / scale, ref_grads[name] / scale, **FP32, msg=name)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_in_bf16_is_as_exact_as_peft(family: str, dropout: float, method: str) -> None:
    """bf16 rounds differently along each path: both are measured against the fp32 computation.

    The fast path's error (max |difference| / max |value|) may not exceed 1.5x peft's plus 0.01,
    for the logits, the input gradient and every A and B gradient (both are ~1-4% here).
    """
    fast32, truth = wrapped_pair(family, torch.float32, dropout, method)
    fast = copy.deepcopy(fast32).to(torch.bfloat16)
    reference = copy.deepcopy(truth).to(torch.bfloat16)
    check_fast_path_runs(fast, torch.bfloat16)
    outputs = {
        name: run(model, family) for name, model in (("truth", truth), ("fast", fast), ("peft", reference))
    }
    grads = {
        name: lora_grads(model) for name, model in (("truth", truth), ("fast", fast), ("peft", reference))
    }
    compared = {
        "logits": [o[0] for o in outputs.values()],
        "input gradient": [o[1] for o in outputs.values()],
    }
    compared.update({name: [grads[k][name] for k in ("truth", "fast", "peft")] for name in grads["truth"]})
    for name, (exact, ours, theirs) in compared.items():
        ours_error, peft_error = relative_error(ours, exact), relative_error(theirs, exact)
        assert ours_error <= 1.5 * peft_error + 0.01, (
            f"{name}: fast {ours_error:.4f} vs peft {peft_error:.4f}"
        )


def relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return float((value.float() - exact).abs().max() / exact.abs().max())


def check_fast_path_runs(model: nn.Module, dtype: torch.dtype) -> None:
    """Every LoRA layer is switched, and would compute a call in ``dtype`` on the fast path."""
    layers = [m for m in model.modules() if isinstance(m, (peftkit_peft_linear(), FastSVDLinear))]
    assert layers and all(uses_fast_lora(m) or isinstance(m, FastSVDLinear) for m in layers)
    probe = torch.zeros(1, layers[0].in_features, dtype=dtype)
    assert all(layer._fast_adapter(probe) == "default" for layer in layers[:1])


def peftkit_peft_linear() -> type:
    from peft.tuners.lora.layer import Linear

    return Linear


def test_dropout_draws_the_same_masks_as_peft() -> None:
    """With dropout, equal outputs need equal masks: a different draw would differ far beyond tolerance."""
    fast, reference = wrapped_pair("bert", dropout=0.5)
    logits, _ = run(fast, "bert", seed=11)
    ref_logits, _ = run(reference, "bert", seed=11)
    other, _ = run(reference, "bert", seed=12)
    torch.testing.assert_close(logits, ref_logits)
    assert not torch.allclose(logits, other, atol=1e-3)


def test_layer_level_input_and_weight_gradients_with_rslora() -> None:
    """One layer, 3-D input needing a gradient, rsLoRA scaling: all gradients equal peft's."""
    fast, reference = wrapped_pair("llama", use_rslora=True)
    layer = fast.model.layers[0].self_attn.q_proj
    ref_layer = reference.model.layers[0].self_attn.q_proj
    assert isinstance(layer, FastLoraLinear) and not isinstance(ref_layer, FastLoraLinear)
    x = torch.randn(2, 5, layer.in_features, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref_out = layer(x), ref_layer(x_ref)
    torch.testing.assert_close(out, ref_out)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (ref_out * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    for name in ("lora_A", "lora_B"):
        torch.testing.assert_close(
            getattr(layer, name)["default"].weight.grad, getattr(ref_layer, name)["default"].weight.grad
        )


def test_eval_and_no_grad_match_peft() -> None:
    fast, reference = wrapped_pair("gpt2", dropout=0.1)
    batch = make_batch("gpt2")
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(**batch).logits, reference.eval()(**batch).logits)
    with torch.inference_mode():
        torch.testing.assert_close(fast(**batch).logits, reference(**batch).logits)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant: bool) -> None:
    fast, reference = wrapped_pair("llama", dropout=0.1)
    fast.activation_checkpointing_enable({"use_reentrant": reentrant})
    fast.config.use_cache = False
    calls = count_fast_calls(fast)
    logits, input_grad = run(fast, "llama")
    assert calls() > 2 * 7  # the forward, then (part of) it again in the backward
    ref_logits, ref_input_grad = run(reference, "llama")
    torch.testing.assert_close(logits, ref_logits, **FP32)
    torch.testing.assert_close(input_grad, ref_input_grad, **FP32)
    for name, grad in lora_grads(fast).items():
        torch.testing.assert_close(grad, lora_grads(reference)[name], **FP32, msg=name)


def count_fast_calls(model: nn.Module):
    """Count forward calls of the fast layers that took the fast path; returns a reader."""
    seen = []
    for module in model.modules():
        if uses_fast_lora(module):
            module.register_forward_hook(
                lambda m, args, out: seen.append(m._fast_adapter(args[0]) is not None)
            )
    return lambda: sum(seen)


def test_a_trainable_base_weight_takes_peft_path_and_gets_its_gradient() -> None:
    fast, reference = wrapped_pair("gpt2")
    for model in (fast, reference):
        model.transformer.h[0].attn.c_attn.base_layer.weight.requires_grad_(True)
    layer = fast.transformer.h[0].attn.c_attn
    assert layer._fast_adapter(torch.zeros(1, 32)) is None
    assert fast.transformer.h[1].attn.c_attn._fast_adapter(torch.zeros(1, 32)) == "default"
    run(fast, "gpt2"), run(reference, "gpt2")
    torch.testing.assert_close(
        layer.base_layer.weight.grad, reference.transformer.h[0].attn.c_attn.base_layer.weight.grad
    )


def test_disabled_adapters_give_the_base_model() -> None:
    torch.manual_seed(0)
    base = make_model("bert")
    expected = copy.deepcopy(base)
    fast, _ = wrapped_pair("bert")
    batch = make_batch("bert")
    batch.pop("labels")
    fast.eval()
    with torch.no_grad(), peftkit.adapters_disabled(fast):
        hidden = fast.bert(**batch).last_hidden_state
    torch.testing.assert_close(hidden, expected.bert(**batch).last_hidden_state)


def test_several_adapters_and_merged_layers_match_peft() -> None:
    """Switching adapters, two active at once (peft's forward) and merged layers give peft's numbers."""
    fast, reference = wrapped_pair("bert")
    for model in (fast, reference):
        torch.manual_seed(3)
        peftkit.add_adapter(model, "lora", adapter_name="other", target_modules=["query", "value"], r=2)
    enable_fast_lora(reference, enabled=False)
    batch = make_batch("bert")
    batch.pop("labels")
    fast.eval(), reference.eval()
    with torch.no_grad():
        for name in ("default", "other"):
            peftkit.set_active(fast, name), peftkit.set_active(reference, name)
            torch.testing.assert_close(fast(**batch).logits, reference(**batch).logits)
        for model in (fast, reference):  # two active adapters: peft sums both branches
            for module in model.modules():
                if isinstance(module, peftkit_peft_linear()):
                    module.set_adapter(["default", "other"])
        torch.testing.assert_close(fast(**batch).logits, reference(**batch).logits)
        query = fast.bert.encoder.layer[0].attention.self.query
        assert query._fast_adapter(torch.zeros(1, 32)) is None  # several active: peft's forward
        query.set_adapter("default")
        assert query._fast_adapter(torch.zeros(1, 32)) == "default"
        unmerged = query(torch.ones(2, 32))
        query.merge()
        assert query._fast_adapter(torch.zeros(1, 32)) is None
        torch.testing.assert_close(query(torch.ones(2, 32)), unmerged, atol=1e-5, rtol=1e-5)


def test_fold_adapter_matches_the_fast_forward() -> None:
    fast, _ = wrapped_pair("gpt2")
    batch = make_batch("gpt2")
    batch.pop("labels")
    fast.eval()
    with torch.no_grad():
        expected = fast(**batch).logits
    plain = fold_adapter(fast)
    assert count_fast(plain) == 0
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, expected, atol=1e-5, rtol=1e-5)


def test_dora_and_autocast_stay_on_peft_path() -> None:
    torch.manual_seed(0)
    dora = peftkit.wrap(make_model("bert"), "dora", target_modules=["query", "value"])
    assert count_fast(dora) == 0
    fast, reference = wrapped_pair("bert")
    batch = make_batch("bert")
    batch.pop("labels")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast.bert.encoder.layer[0].attention.self.query._fast_adapter(torch.zeros(1, 32)) is None
        torch.testing.assert_close(fast.eval()(**batch).logits, reference.eval()(**batch).logits)


def test_layers_on_an_8bit_base_keep_peft_class() -> None:
    pytest.importorskip("bitsandbytes")
    from peft.tuners.lora.bnb import Linear8bitLt

    with tempfile.TemporaryDirectory() as tmp:
        save_tiny_model("bert", tmp)
        model = peftkit.load_base(tmp, task="token-classification", num_labels=5, load_in_8bit=True)
        model = peftkit.wrap(model, "lora")
    layers = [m for m in model.modules() if isinstance(m, Linear8bitLt)]
    assert layers and count_fast(model) == 0


def test_adapter_trained_on_the_fast_path_loads_in_plain_peft(tmp_path) -> None:
    fast, _ = wrapped_pair("bert")
    assert count_fast(fast) == 4 * 2 + 2 * 2  # q, k, v, attention output, intermediate, output; 2 layers
    optimizer = torch.optim.AdamW([p for p in fast.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        fast(**make_batch("bert")).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peftkit.save_adapter(fast, tmp_path / "adapter")
    batch = make_batch("bert", seed=4)
    batch.pop("labels")
    with torch.no_grad():
        expected = fast.eval()(**batch).logits
        loaded = PeftModel.from_pretrained(make_model("bert"), str(tmp_path / "adapter")).eval()
        assert count_fast(loaded) == 0
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_path_on_cuda_matches_peft() -> None:
    """fp32: equal to peft's within GEMM rounding; bf16: as close to the fp32 result as peft's."""
    fast32, truth = (m.cuda() for m in wrapped_pair("llama"))
    fast16, peft16 = copy.deepcopy(fast32).to(torch.bfloat16), copy.deepcopy(truth).to(torch.bfloat16)
    check_fast_path_runs(fast16, torch.bfloat16)
    assert fast16.model.layers[0].self_attn.q_proj._fast_adapter(
        torch.zeros(1, 32, device="cuda", dtype=torch.bfloat16)
    )
    results = {
        name: run(model, "llama")
        for name, model in (("truth", truth), ("fast32", fast32), ("fast16", fast16), ("peft16", peft16))
    }
    grads = {
        name: lora_grads(model)
        for name, model in (("truth", truth), ("fast32", fast32), ("fast16", fast16), ("peft16", peft16))
    }
    for index in (0, 1):
        torch.testing.assert_close(results["fast32"][index], results["truth"][index], atol=1e-4, rtol=1e-4)
        exact = results["truth"][index]
        assert (
            relative_error(results["fast16"][index], exact)
            <= 1.5 * relative_error(results["peft16"][index], exact) + 0.01
        )
    for name, exact in grads["truth"].items():
        scale = exact.abs().max()
        torch.testing.assert_close(
            grads["fast32"][name] / scale, exact / scale, atol=1e-4, rtol=1e-4, msg=name
        )
        assert (
            relative_error(grads["fast16"][name], exact)
            <= 1.5 * relative_error(grads["peft16"][name], exact) + 0.01
        )
