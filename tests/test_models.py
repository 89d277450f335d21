"""peftkit.models: one torch-free table of families, tasks, heads and backbones; the T5 family end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import peftkit
from peftkit import models
from peftkit.errors import UnsupportedArchitectureError
from peftkit.targets import default_targets
from tests.tiny_models import make_batch, make_model, save_tiny_model

ALL = ("bert", "gpt2", "llama", "t5")
EXPECTED = {
    # family: (task, peft task type, backbone attribute, outside the backbone, task heads)
    "bert": ("token-classification", "TOKEN_CLS", "bert", ["classifier"], ["classifier"]),
    "gpt2": ("sequence-classification", "SEQ_CLS", "transformer", ["score"], ["score"]),
    "llama": ("causal-lm", "CAUSAL_LM", "model", ["lm_head"], []),
    "t5": ("seq2seq-lm", "SEQ_2_SEQ_LM", None, ["lm_head"], []),
}


@pytest.mark.parametrize("family", ALL)
def test_tasks_backbones_and_heads(family: str) -> None:
    model = make_model(family)
    task, peft_task, backbone_attr, outside, heads = EXPECTED[family]
    assert models.family_of(model).name == family
    assert models.task_of_model(model) == task and models.peft_task_type(model) == peft_task
    assert models.TASKS[task].auto_class.startswith("AutoModelFor")
    assert models.backbone(model) is (getattr(model, backbone_attr) if backbone_attr else None)
    assert models.outside_backbone(model) == outside
    assert models.head_module_names(model) == heads


@pytest.mark.parametrize("family", ALL)
def test_every_role_resolves_to_linear_layers_of_every_family(family: str) -> None:
    model = make_model(family)
    for role in models.ROLES:
        patterns = default_targets(model, role)
        names = peftkit.targets.resolve_targets(model, patterns)
        assert names and all(peftkit.targets.is_linear_like(model.get_submodule(n)) for n in names), role


def test_unknown_architecture_names_the_role_and_the_linear_layers() -> None:
    model = make_model("bert")
    model.config.model_type = "mystery"
    with pytest.raises(UnsupportedArchitectureError, match=r"'attention'.*model_type='mystery'.*query"):
        default_targets(model, "attention")


def test_task_names_from_classes_and_peft() -> None:
    assert models.task_of_class("RobertaForTokenClassification") == "token-classification"
    assert models.task_of_class("GPT2LMHeadModel") == "causal-lm"
    assert models.task_of_class("BertModel") is None
    assert models.task_of_peft_type("SEQ_2_SEQ_LM") == "seq2seq-lm"


def test_models_module_imports_no_torch() -> None:
    code = "import sys, peftkit.models; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("method", ["lora", "ia3", "adapter"])
def test_t5_wraps_trains_saves_and_loads(method: str, tmp_path: Path) -> None:
    batch = make_batch("t5")
    model = peftkit.wrap(make_model("t5"), method)
    torch.testing.assert_close(model(**batch).logits, make_model("t5")(**batch).logits)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        expected = model(**batch).logits
        assert model(**batch).loss < loss
    peftkit.save_adapter(model, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(
            peftkit.load_adapter(make_model("t5"), tmp_path / "a")(**batch).logits, expected
        )


def test_t5_on_an_8bit_base_and_merged_with_its_check(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    base_dir = tmp_path / "t5"
    save_tiny_model("t5", base_dir)
    model = peftkit.load_base(str(base_dir), task="seq2seq-lm", load_in_8bit=True)
    assert peftkit.quantization.is_quantized(model)
    assert model.lm_head.weight.dtype == torch.float32
    model = peftkit.wrap(model, "lora")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in make_batch("t5").items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    optimizer.step()
    adapter = peftkit.save_adapter(model, tmp_path / "adapter")
    merged = peftkit.merge_adapter(str(base_dir), adapter, tmp_path / "merged")
    report = json.loads((tmp_path / "merged" / "peftkit_merge.json").read_text())
    assert report["max_abs_logit_diff_fp32"] is not None and report["max_abs_logit_diff_fp32"] < 1e-4
    assert type(merged).__name__ == "T5ForConditionalGeneration"
