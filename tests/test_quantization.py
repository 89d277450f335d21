"""load_base: 8-bit and 4-bit bases with unquantised heads, ready for adapters; compute dtype; logs; clear errors.

Tests of the CPU paths (the fast int8 path, bitsandbytes' CPU kernels) load with ``device_map="cpu"``;
the others follow ``load_base``'s default device (``cuda:0`` on a GPU machine), inputs included.
"""

from __future__ import annotations

import logging
import sys

import bitsandbytes as bnb
import peft
import pytest
import torch
from torch import nn
from torch.testing import assert_close
from transformers import BertConfig, BertForTokenClassification

import peftkit
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
from tests.tiny_models import make_batch, make_model, model_device, on_device

TASK = {"bert": "token-classification", "gpt2": "sequence-classification", "llama": "causal-lm"}
LABELS = {"bert": 5, "gpt2": 3, "llama": None}
HEAD = {"bert": "classifier", "gpt2": "score", "llama": "lm_head"}
LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}
NEEDS_FAST = pytest.mark.skipif(activation_code_max() is None, reason="oneDNN int8 kernels unavailable")


def load8(path: str, family: str, **kwargs):
    return load_base(path, task=TASK[family], num_labels=LABELS[family], load_in_8bit=True, **kwargs)


def inputs(family: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    batch = make_batch(family, device=device)
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
    model = load8(path, family, device_map="cpu")
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
    model = load8(tiny_model_dir(family), family, device_map="cpu", gradient_checkpointing=checkpointing)
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
    model = load8(tiny_model_dir("bert"), "bert", device_map="cpu")
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
    model(**inputs("bert", model_device(model)))
    model.eval()
    model(**inputs("bert", model_device(model)))
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
    assert "stay unquantised: Conv1d" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_8bit_base(tiny_model_dir) -> None:
    model = load8(tiny_model_dir("bert"), "bert")  # device_map defaults to CUDA device 0
    assert model.classifier.weight.device.type == "cuda" and is_quantized(model)
    assert describe_int8_paths(model)["bnb"] == 12  # the fast path is a CPU path: left off on CUDA
    batch = on_device(inputs("bert"), model)
    reference = make_model("bert")
    model.classifier.load_state_dict(reference.classifier.state_dict())
    with torch.inference_mode():
        got = model(**batch).logits.float().cpu()
    expected = reference(**inputs("bert")).logits
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()


# --------------------------------------------------------------------------- compute dtype, 4-bit, logs


def _first_quantized_layer(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)))


@pytest.mark.parametrize("kind", ["8bit-bf16", "4bit"])
def test_a_bf16_compute_dtype_keeps_everything_unquantised_in_bf16_but_the_trained_head(
    tiny_model_dir, family: str, kind: str
) -> None:
    """No blanket up-cast: embeddings, norms, biases and the LM head stay bf16, activations run in bf16."""
    options = (
        {"load_in_8bit": True, "dtype": torch.bfloat16} if kind == "8bit-bf16" else {"load_in_4bit": True}
    )
    model = load_base(tiny_model_dir(family), task=TASK[family], num_labels=LABELS[family], **options)
    head = HEAD[family] if family != "llama" else None
    for name, param in model.named_parameters():
        if not param.is_floating_point():
            continue  # the quantised weights
        in_head = head is not None and name.startswith(head + ".")
        assert param.dtype == (torch.float32 if in_head else torch.bfloat16), (name, param.dtype)
        assert param.requires_grad == in_head, name
    seen = []
    _first_quantized_layer(model).register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    out = model(**make_batch(family, device=model_device(model)))
    assert seen == [torch.bfloat16]
    assert out.logits.dtype == (
        torch.float32 if head else torch.bfloat16
    )  # the trained head computes in fp32
    if head is not None:  # llama: nothing is trainable before an adapter is added
        out.loss.backward()
        assert getattr(model, head).weight.grad.dtype == torch.float32


def test_without_a_dtype_8bit_bases_keep_float32_even_from_a_bf16_checkpoint(tmp_path) -> None:
    make_model("llama").to(torch.bfloat16).save_pretrained(tmp_path)
    model = load_base(str(tmp_path), task="causal-lm", load_in_8bit=True)
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    assert floats == {torch.float32}
    assert model.lm_head.weight.dtype == torch.float32


def test_dtype_may_be_named(tiny_model_dir) -> None:
    model = load_base(tiny_model_dir("llama"), task="causal-lm", load_in_8bit=True, dtype="bfloat16")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    with pytest.raises(QuantizationError, match="bfloat16"):
        load_base(tiny_model_dir("llama"), task="causal-lm", load_in_4bit=True, dtype="int8")


def test_4bit_bases_are_nf4_with_double_quantised_scales(tiny_model_dir) -> None:
    model = load_base(tiny_model_dir("llama"), task="causal-lm", load_in_4bit=True)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14  # 2 x (q, k, v, o, gate, up, down); lm_head stays unquantised
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested and layers[0].compute_dtype == torch.bfloat16
    assert type(model.lm_head) is nn.Linear


def test_8bit_and_4bit_together_are_refused(tiny_model_dir) -> None:
    with pytest.raises(QuantizationError, match="not both"):
        load_base(tiny_model_dir("bert"), num_labels=5, load_in_8bit=True, load_in_4bit=True)


@pytest.mark.parametrize(
    ("options", "device_map", "path"),
    [
        ({"load_in_8bit": True}, "cpu", "the fast int8 CPU path"),
        ({"load_in_8bit": True, "dtype": torch.bfloat16}, "cpu", "bitsandbytes CPU path (int8"),
        ({"load_in_4bit": True}, "cpu", "bitsandbytes CPU path (NF4"),
        ({"load_in_8bit": True}, None, None),  # the default device: CUDA kernels on a GPU machine
    ],
)
def test_one_log_line_says_which_kernels_the_quantised_layers_run(
    tiny_model_dir, caplog, options: dict, device_map: str | None, path: str | None
) -> None:
    if path is None:
        path = "bitsandbytes CUDA kernels" if torch.cuda.is_available() else "the fast int8 CPU path"
    if "fast int8" in path and activation_code_max() is None:
        path = "oneDNN int8 kernels unavailable"
    with caplog.at_level("INFO", logger="peftkit.quantization.loading"):
        load_base(tiny_model_dir("bert"), num_labels=5, device_map=device_map, **options)
    lines = [r.getMessage() for r in caplog.records if r.name == "peftkit.quantization.loading"]
    runs = [line for line in lines if "linear layers run" in line]
    assert len(runs) == 1 and path in runs[0], lines


@pytest.mark.parametrize("kind", ["bf16-fast", "bf16-default"])
def test_the_fast_int8_path_takes_bf16_activations_or_stays_off_for_them(tiny_model_dir, kind: str) -> None:
    """With a bf16 compute dtype the fast path is off by default (its packed copy doubles the int8
    weights' memory); enabled, it casts bf16 activations in and its output back to bf16."""
    if kind == "bf16-fast" and activation_code_max() is None:
        pytest.skip("oneDNN int8 kernels unavailable")
    fast = {"bf16-fast": True, "bf16-default": None}[kind]
    model = load8(tiny_model_dir("llama"), "llama", device_map="cpu", dtype=torch.bfloat16, fast_int8=fast)
    reference = make_model("llama").to(torch.bfloat16)
    with torch.inference_mode():
        got, expected = model(**inputs("llama")).logits, reference(**inputs("llama")).logits
    counts = describe_int8_paths(model)
    if fast:
        assert counts["fast_int8"] == 14 and counts["bnb_fallback"] == 0
    else:
        assert counts["bnb"] == 14 and counts["fast_int8"] == 0
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max() <= 0.05 * expected.float().abs().max()


def test_bitsandbytes_per_matmul_cast_warning_is_shown_once(tiny_model_dir, caplog) -> None:
    """bitsandbytes warns "MatMul8bitLt: inputs will be cast ... to float16" at every int8 matmul (its CUDA
    path, and its CPU inference path): load_base lets the first through and drops the repeats."""
    from peftkit.notices import BNB_MATMUL_LOGGER

    model = load8(tiny_model_dir("bert"), "bert", fast_int8=False).eval()  # fp32 activations
    for f in logging.getLogger(BNB_MATMUL_LOGGER).filters:
        getattr(f, "seen", set()).clear()  # an earlier test may have shown it already
    with caplog.at_level("WARNING", logger=BNB_MATMUL_LOGGER), torch.no_grad():
        for _ in range(3):
            model(**inputs("bert", model_device(model)))
    casts = [r for r in caplog.records if "inputs will be cast" in r.getMessage()]
    assert len(casts) == 1, f"{len(casts)} cast warnings for 3 forwards of 12 int8 layers"


def test_quantised_loads_read_the_checkpoint_with_pread(tiny_model_dir, monkeypatch) -> None:
    """transformers memory-maps every shard until the load ends: on CPU the whole checkpoint would count
    in the resident set while it is quantised. load_base makes it read each tensor with pread instead."""
    import safetensors
    import transformers.modeling_utils as modeling_utils

    from peftkit.quantization.streaming import pread_checkpoints

    with pread_checkpoints() as switched:
        if not switched:
            pytest.skip(f"safetensors {safetensors.__version__} has no pread backend")
    backends = []

    def recording_safe_open(*args, **kwargs):
        backends.append(kwargs.get("backend"))
        return safetensors.safe_open(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_open", recording_safe_open)
    model = load8(tiny_model_dir("bert"), "bert")
    assert backends == ["pread"] and is_quantized(model)
    assert modeling_utils.safe_open is recording_safe_open  # restored after the load
    load_base(tiny_model_dir("bert"), num_labels=5)
    assert backends == ["pread", "mmap"]  # full-precision loads map the file lazily, as before


@pytest.mark.parametrize("bits", [8, 4])
def test_more_heads_can_be_kept_unquantised_and_trained(tiny_model_dir, bits: int) -> None:
    # The sentiment recipe trains BERT's [CLS] pooler with the classifier (head_modules): a
    # quantised pooler could not be trained, so the recipe keeps it unquantised.
    path = tiny_model_dir("bert")
    options = {f"load_in_{bits}bit": True, "ignore_mismatched_sizes": True}
    model = load_base(
        path, task="sequence-classification", num_labels=2, keep_unquantized=["bert.pooler"], **options
    )
    pooler = model.bert.pooler.dense
    assert type(pooler) is nn.Linear and pooler.weight.dtype == torch.float32 and pooler.weight.requires_grad
    wrapped = peftkit.wrap(
        model, "lora", target_modules=["query"], head_modules=["classifier", "bert.pooler"]
    )
    batch = make_batch("bert", device=model_device(wrapped))
    batch["labels"] = batch["labels"][:, 0].clamp(max=1)
    wrapped.train()
    wrapped(**batch).loss.backward()
    assert all(p.grad is not None for p in wrapped.parameters() if p.requires_grad)
    with pytest.raises(QuantizationError, match="keep_unquantized names no module of this model: bert.pooll"):
        load_base(
            path, task="sequence-classification", num_labels=2, keep_unquantized=["bert.pooll"], **options
        )
