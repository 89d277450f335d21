"""load_base: 8-bit bases with full-precision heads, ready for adapters; memory; clear errors."""

from __future__ import annotations

import sys

import bitsandbytes as bnb
import peft
import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import BertConfig, BertForTokenClassification

from peftkit.errors import QuantizationError
from peftkit.quantization import (
    TASKS,
    describe_int8_paths,
    enable_fast_int8,
    is_quantized,
    load_base,
    quantized_linear_bytes,
    skip_modules,
)
from peftkit.quantization import loading as loading_module
from peftkit.quantization.int8_kernels import activation_code_max
from tests.tiny_models import make_batch, make_model

TASK = {"bert": "token-classification", "gpt2": "sequence-classification", "llama": "causal-lm"}
LABELS = {"bert": 5, "gpt2": 3, "llama": None}
HEAD = {"bert": "classifier", "gpt2": "score", "llama": "lm_head"}
LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}
NEEDS_FAST = pytest.mark.skipif(activation_code_max() is None, reason="oneDNN int8 kernels unavailable")


def load8(path: str, family: str, **kwargs):
    return load_base(path, task=TASK[family], num_labels=LABELS[family], load_in_8bit=True, **kwargs)


def inputs(family: str) -> dict[str, torch.Tensor]:
    batch = make_batch(family)
    batch.pop("labels")
    return batch


def test_8bit_base_keeps_heads_norms_and_embeddings_in_full_precision(tiny_model_dir, family: str) -> None:
    model = load8(tiny_model_dir(family), family, device_map="cpu")
    assert is_quantized(model)
    head = getattr(model, HEAD[family])
    assert type(head) is nn.Linear and head.weight.dtype == torch.float32
    int8_layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(int8_layers) >= 8 and all(m.weight.dtype == torch.int8 for m in int8_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower():
            assert all(p.dtype == torch.float32 for p in module.parameters()), name
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({HEAD[family]} if family != "llama" else set())  # the LM head is pretrained: frozen
    if family != "llama":
        head.weight.requires_grad_(True)  # would fail on an int8 head


def test_skip_modules_are_found_before_loading(tiny_model_dir) -> None:
    path = tiny_model_dir("bert")
    assert skip_modules(path, "token-classification", num_labels=5) == ["classifier"]
    assert skip_modules(path, "sequence-classification", num_labels=2) == ["classifier"]
    assert skip_modules(path, "question-answering") == ["qa_outputs"]
    assert skip_modules(tiny_model_dir("gpt2"), "sequence-classification", num_labels=3) == ["score"]
    assert skip_modules(tiny_model_dir("llama"), "causal-lm") == ["lm_head"]


@pytest.mark.parametrize("task", ["sequence-classification", "question-answering"])
def test_other_bert_tasks(tiny_model_dir, task: str) -> None:
    # The checkpoint is a token classifier with 5 labels: its head is dropped (QA) or, with another
    # label count, replaced (ignore_mismatched_sizes is passed through to from_pretrained).
    model = load_base(
        tiny_model_dir("bert"), task=task, num_labels=2, load_in_8bit=True, ignore_mismatched_sizes=True
    )
    head = model.classifier if task == "sequence-classification" else model.qa_outputs
    assert type(head) is nn.Linear and head.weight.requires_grad and head.out_features == 2
    if task == "sequence-classification":  # the pooler belongs to the backbone: 8-bit
        assert isinstance(model.bert.pooler.dense, bnb.nn.Linear8bitLt)


@NEEDS_FAST
def test_cpu_8bit_logits_are_close_to_fp32(tiny_model_dir, family: str) -> None:
    path = tiny_model_dir(family)
    model = load8(path, family)
    reference = make_model(family)
    if family != "llama":
        getattr(model, HEAD[family]).load_state_dict(getattr(reference, HEAD[family]).state_dict())
    with torch.inference_mode():
        got, expected = model(**inputs(family)).logits, reference(**inputs(family)).logits
    assert describe_int8_paths(model)["fast_int8"] == sum(
        isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules()
    )
    # 8-bit weights and 7/8-bit per-token activations: about 1% relative error through two layers.
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()


def test_fast_path_can_be_left_off(tiny_model_dir) -> None:
    model = load8(tiny_model_dir("bert"), "bert", fast_int8=False)
    counts = describe_int8_paths(model)
    assert counts["bnb"] == 12 and counts["idle"] == counts["fast_int8"] == 0


def test_linear_weight_bytes_are_about_a_quarter_of_fp32(tmp_path) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=3,
    )
    BertForTokenClassification(config).save_pretrained(tmp_path)
    model = load_base(str(tmp_path), num_labels=3, load_in_8bit=True, fast_int8=False)
    report = quantized_linear_bytes(model)
    expected_fp32 = sum(
        4 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear)
    )
    expected_fp32 -= 4 * model.classifier.in_features * model.classifier.out_features  # the head stays fp32
    assert report.layers == 12 and report.fp32_bytes == expected_fp32
    assert report.int8_bytes * 4 == report.fp32_bytes
    assert report.ratio <= 0.27  # int8 codes + one fp32 scale per row: 0.25 + 1/in_features
    assert report.as_dict()["ratio"] == report.ratio and report.packed_bytes == 0


def test_fp32_load_is_untouched(tiny_model_dir) -> None:
    model = load_base(tiny_model_dir("bert"), num_labels=5)
    assert not is_quantized(model)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert_close(model(**inputs("bert")).logits, make_model("bert")(**inputs("bert")).logits)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_on_the_8bit_base(tiny_model_dir, family: str, checkpointing: bool) -> None:
    model = load8(tiny_model_dir(family), family, gradient_checkpointing=checkpointing)
    flag = (
        "is_activation_checkpointing"
        if hasattr(model, "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert getattr(model, flag) == checkpointing
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=LORA_TARGETS[family]))
    model.train()
    loss = model(**make_batch(family)).loss
    loss.backward()
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    assert lora and all(p.grad is not None for p in lora)
    assert any(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if "lora_B" in name)
    counts = describe_int8_paths(model)
    if (
        activation_code_max() is not None
    ):  # training runs the fast int8 forward where it can, else bitsandbytes'
        assert counts["fast_int8"] > 0 and counts["bnb_fallback"] == 0
    else:
        assert counts["fast_int8"] == 0 and counts["bnb_fallback"] > 0


@NEEDS_FAST
def test_fast_path_under_peft_lora_matches_the_bitsandbytes_path(tiny_model_dir) -> None:
    model = load8(tiny_model_dir("bert"), "bert")
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False)
    )
    model.eval()
    with torch.inference_mode():
        fast = model(**inputs("bert")).logits
        enable_fast_int8(model, enabled=False)
        slow = model(**inputs("bert")).logits
    assert describe_int8_paths(model)["bnb"] == 12
    assert (fast - slow).abs().max() <= 0.05 * slow.abs().max()


def test_input_embeddings_require_grad_only_when_training(tiny_model_dir) -> None:
    model = load8(tiny_model_dir("bert"), "bert")
    seen = []
    model.bert.embeddings.register_forward_hook(
        lambda module, args, output: seen.append(output.requires_grad)
    )
    model.train()
    model(**inputs("bert"))
    model.eval()
    model(**inputs("bert"))
    assert seen == [True, False]


def test_unknown_task_lists_the_valid_ones(tiny_model_dir) -> None:
    with pytest.raises(QuantizationError, match="token-classification") as error:
        load_base(tiny_model_dir("bert"), task="token-clasification", load_in_8bit=True)
    assert "Did you mean 'token-classification'" in str(error.value)
    assert all(task in str(error.value) for task in TASKS)


def test_missing_bitsandbytes_says_how_to_install(tiny_model_dir, monkeypatch) -> None:
    path = tiny_model_dir("bert")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(QuantizationError, match="pip install bitsandbytes"):
        load_base(path, load_in_8bit=True)
    with pytest.raises(QuantizationError, match="pip install bitsandbytes"):
        enable_fast_int8(nn.Linear(2, 2))
    load_base(path, num_labels=5)  # fp32 loading does not need bitsandbytes


def test_quantization_config_and_load_in_8bit_conflict(tiny_model_dir) -> None:
    from transformers import BitsAndBytesConfig

    with pytest.raises(QuantizationError, match="quantization_config"):
        load_base(
            tiny_model_dir("bert"),
            load_in_8bit=True,
            quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        )


def test_model_without_convertible_layers_is_refused(tiny_model_dir, monkeypatch) -> None:
    # Skipping the whole backbone leaves nothing bitsandbytes could convert, as for an architecture
    # whose layers are not nn.Linear / Conv1D.
    monkeypatch.setattr(loading_module, "skip_modules", lambda *args, **kwargs: ["bert", "classifier"])
    with pytest.raises(QuantizationError, match="No layer of BertForTokenClassification could be made 8-bit"):
        load_base(tiny_model_dir("bert"), num_labels=5, load_in_8bit=True)


def test_backbone_layers_left_in_full_precision_are_named(tmp_path, caplog) -> None:
    """ConvBERT's convolution layers cannot be 8-bit: the load works and says which layers stay fp32."""
    from transformers import ConvBertConfig, ConvBertForTokenClassification

    torch.manual_seed(0)
    config = ConvBertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        embedding_size=32,
        num_labels=5,
    )
    ConvBertForTokenClassification(config).save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="peftkit.quantization.loading"):
        model = load_base(tmp_path, num_labels=5, load_in_8bit=True)
    assert is_quantized(model)
    assert "stay in full precision: Conv1d" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_8bit_base(tiny_model_dir) -> None:
    model = load8(tiny_model_dir("bert"), "bert")  # device_map defaults to CUDA device 0
    assert model.classifier.weight.device.type == "cuda" and is_quantized(model)
    assert describe_int8_paths(model)["bnb"] == 12  # the fast path is a CPU path: left off on CUDA
    batch = {k: v.cuda() for k, v in inputs("bert").items()}
    reference = make_model("bert")
    model.classifier.load_state_dict(reference.classifier.state_dict())
    with torch.inference_mode():
        got = model(**batch).logits.float().cpu()
    expected = reference(**inputs("bert")).logits
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
