"""Interop with peft, both ways, for every method peft has: lora, dora, adalora, ia3, prefix.

* ours -> peft: an adapter trained and saved by peftkit loads with ``peft.PeftModel.from_pretrained``
  and gives the same logits;
* peft -> ours: an adapter made by peft (``get_peft_model``, weights moved off their initial values)
  and saved by peft loads with ``peftkit.load_adapter`` and gives the same logits.

peft 0.21's prefix tuning refuses BERT and GPT-2 classifiers under transformers 5 (their forward
takes ``cache`` where peft looks for ``past_key_values``), so prefix interop runs on the Llama LM.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import AdaLoraConfig, IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model

import peftkit
from peftkit import models
from tests.tiny_models import FAMILIES, make_batch, make_model

PEFT_METHODS = ("lora", "dora", "adalora", "ia3", "prefix")
CASES = [(m, f) for m in PEFT_METHODS for f in FAMILIES if m != "prefix" or f == "llama"]
OPTIONS = {"adalora": {"total_step": 20}, "prefix": {"num_virtual_tokens": 4}}


@torch.no_grad()
def logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    batch = make_batch(family, seed=3)
    batch.pop("labels")
    return model(**batch).logits


def trained_ours(family: str, method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = peftkit.wrap(make_model(family), method, **OPTIONS.get(method, {}))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, 4):
        model(**make_batch(family)).loss.backward()
        optimizer.step()
        peftkit.on_optimizer_step(model, step)
        optimizer.zero_grad()
    return model


def peft_config(family: str, method: str, model: torch.nn.Module):
    targets = {
        "attention": models.targets_for(model, "attention"),
        "kv": models.targets_for(model, "key_value"),
    }
    common = {"task_type": models.peft_task_type(model)}
    heads = models.head_module_names(model)
    if heads:
        common["modules_to_save"] = heads
    conv1d = family == "gpt2"
    if method in ("lora", "dora"):
        return LoraConfig(
            r=4,
            target_modules=targets["attention"],
            use_dora=method == "dora",
            fan_in_fan_out=conv1d,
            **common,
        )
    if method == "adalora":
        return AdaLoraConfig(
            total_step=20,
            init_r=4,
            target_r=2,
            target_modules=targets["attention"],
            fan_in_fan_out=conv1d,
            **common,
        )
    if method == "ia3":
        ffn = models.targets_for(model, "ffn_output")
        return IA3Config(
            target_modules=rf"{ffn}|(.*\.)?({'|'.join(targets['kv'])})",
            feedforward_modules=ffn,
            fan_in_fan_out=conv1d,
            **common,
        )
    return PrefixTuningConfig(num_virtual_tokens=4, **common)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_peft_loads_our_directory(method: str, family: str, tmp_path: Path) -> None:
    model = trained_ours(family, method)
    expected = logits(model.eval(), family)
    directory = peftkit.save_adapter(model, tmp_path / "ours")
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == peftkit.get_method(method).peft_type and config["inference_mode"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # peft's own note that it ignores rank_pattern keys
        warnings.filterwarnings("error", message=".*fan_in_fan_out")
        peft_model = PeftModel.from_pretrained(make_model(family), str(directory)).eval()
    torch.testing.assert_close(logits(peft_model, family), expected)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_we_load_a_directory_written_by_peft(method: str, family: str, tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    base = make_model(family)
    peft_model = get_peft_model(base, peft_config(family, method, base))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every adapter weight off its initial value (zeros, ones) so it matters
        for param in peft_model.parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator, device="cpu").to(param.device)
                param.add_(0.1 * noise)
    peft_model.eval()
    expected = logits(peft_model, family)
    assert not torch.allclose(expected, logits(make_model(family), family))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    assert not (tmp_path / "peft" / "peftkit.json").exists()
    ours = peftkit.load_adapter(make_model(family), tmp_path / "peft")
    assert peftkit.active_adapter(ours) == "default"
    assert peftkit.state.get_state(ours).adapters["default"].method == method
    torch.testing.assert_close(logits(ours, family), expected)
    assert "no base-model fingerprint" in caplog.text
