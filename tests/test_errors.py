"""Every bad input to wrap() gets a PeftkitError naming the problem and the fix."""

from __future__ import annotations

import pytest
from torch import nn

import peftkit
from peftkit.errors import (
    AlreadyWrappedError,
    InvalidOptionError,
    NoTargetsMatchedError,
    UnknownMethodError,
    UnsupportedArchitectureError,
)
from tests.tiny_models import make_model


def test_unknown_method_lists_known_and_suggests_closest() -> None:
    with pytest.raises(UnknownMethodError) as info:
        peftkit.wrap(make_model("bert"), "lroa")
    message = str(info.value)
    assert "'lroa'" in message and "Did you mean 'lora'?" in message
    for name in ("adalora", "adapter", "lora"):
        assert name in message


class TinyCustomModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(8, 8)
        self.mixer = nn.Linear(8, 8)

    def forward(self, x):
        return self.mixer(self.encoder_proj(x))


def test_unsupported_architecture_lists_candidate_modules() -> None:
    with pytest.raises(UnsupportedArchitectureError) as info:
        peftkit.wrap(TinyCustomModel(), "lora")
    assert "encoder_proj" in str(info.value) and "mixer" in str(info.value)
    assert "target_modules" in str(info.value)


def test_unsupported_architecture_works_with_explicit_targets() -> None:
    model = peftkit.wrap(TinyCustomModel(), "lora", target_modules=["mixer"], r=2)
    assert peftkit.summary(model).trainable == 2 * 8 + 8 * 2


def test_targets_matching_nothing() -> None:
    with pytest.raises(NoTargetsMatchedError) as info:
        peftkit.wrap(make_model("bert"), "lora", target_modules=["q_proj"])
    message = str(info.value)
    assert "q_proj" in message and "query" in message  # names what exists


def test_targets_matching_only_the_head_say_the_head_is_trained_in_full() -> None:
    with pytest.raises(NoTargetsMatchedError, match="task head classifier.*query"):
        peftkit.wrap(make_model("bert"), "lora", target_modules=["classifier"])


def test_a_target_regex_that_does_not_compile_is_an_option_error() -> None:
    with pytest.raises(InvalidOptionError, match="not a valid regular expression.*'query', 'value'"):
        peftkit.wrap(make_model("bert"), "lora", target_modules="[query")


def test_a_model_path_instead_of_a_model_says_how_to_load_it() -> None:
    with pytest.raises(InvalidOptionError, match="got str 'bert-base-uncased'.*from_pretrained"):
        peftkit.wrap("bert-base-uncased", "lora")


def test_architecture_without_adapter_defaults_lists_only_the_ones_that_have_them() -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=50
    )
    with pytest.raises(UnsupportedArchitectureError) as info:
        peftkit.wrap(GPTNeoXForCausalLM(config), "adapter")
    known = str(info.value).split("known: ")[1].split(")")[0]
    assert "gpt_neox" not in known and "bert" in known


@pytest.mark.parametrize(
    ("method", "targets", "culprit"),
    [
        ("lora", r".*layer\.0\.attention\.self\.query|.*layer\.0\.attention\.output\.LayerNorm", "LayerNorm"),
        ("lora", ["attention"], "BertAttention"),
        ("adalora", ["LayerNorm"], "LayerNorm"),
        ("adapter", ["LayerNorm"], "LayerNorm"),
    ],
)
def test_targets_that_are_not_linear_layers_leave_the_model_unchanged(
    method: str, targets: list[str] | str, culprit: str
) -> None:
    model = make_model("bert")
    modules = [name for name, _ in model.named_modules()]
    options = {"total_step": 10} if method == "adalora" else {}
    with pytest.raises(InvalidOptionError) as info:
        peftkit.wrap(model, method, target_modules=targets, **options)
    message = str(info.value)
    assert f"({culprit})" in message and "query" in message and "left unchanged" in message
    assert [name for name, _ in model.named_modules()] == modules
    assert all(param.requires_grad for param in model.parameters())
    peftkit.wrap(model, method, **options)  # the model is still a plain base: wrapping it works
    assert peftkit.summary(model).trainable > 0


def test_wrapping_twice_is_refused_and_points_to_add_adapter() -> None:
    model = peftkit.wrap(make_model("gpt2"), "lora")
    with pytest.raises(AlreadyWrappedError, match="add_adapter"):
        peftkit.wrap(model, "adapter")


def test_duplicate_adapter_name_is_refused() -> None:
    model = peftkit.wrap(make_model("gpt2"), "lora", adapter_name="ner")
    with pytest.raises(AlreadyWrappedError, match="'ner'"):
        peftkit.add_adapter(model, "lora", adapter_name="ner")


@pytest.mark.parametrize(
    ("method", "options", "fragment"),
    [
        ("lora", {"r": 0}, "r=0"),
        ("lora", {"r": -3}, "r=-3"),
        ("lora", {"dropout": 1.0}, "dropout=1.0"),
        ("lora", {"dropout": -0.1}, "dropout=-0.1"),
        ("lora", {"alpha": 0}, "alpha=0"),
        ("lora", {"r": 2.5}, "expected int"),
        ("lora", {"r": "8"}, "expected int"),
        ("lora", {"rank": 8}, "Did you mean 'r'?"),
        ("lora", {"target_modules": []}, "target_modules=[]"),
        ("adalora", {}, "total_step"),
        ("adalora", {"total_step": 10, "tinit": 6, "tfinal": 4}, "total_step > tinit + tfinal"),
        ("adalora", {"total_step": 10, "target_r": 16, "init_r": 12}, "target_r=16"),
        ("adalora", {"total_step": 0}, "total_step=0"),
        (
            "adapter",
            {"placement": "middle"},
            "placement='middle' is not valid: use one of 'houlsby', 'pfeiffer'",
        ),
        ("adapter", {"reduction_factor": 0}, "reduction_factor=0"),
        ("adapter", {"non_linearity": "sigmoidish"}, "non_linearity='sigmoidish'"),
        ("adapter", {"dropout": 2}, "dropout=2"),
    ],
)
def test_invalid_options(method: str, options: dict, fragment: str) -> None:
    model = make_model("bert")
    with pytest.raises(InvalidOptionError) as info:
        peftkit.wrap(model, method, **options)
    assert fragment in str(info.value)
    assert not any(p.requires_grad is False for p in model.parameters()), (
        "a failed wrap must not touch the model"
    )


def test_invalid_adapter_name() -> None:
    with pytest.raises(InvalidOptionError, match="adapter_name"):
        peftkit.wrap(make_model("bert"), "lora", adapter_name="my.adapter")


def test_errors_share_a_base_class() -> None:
    for cls in (UnknownMethodError, InvalidOptionError, NoTargetsMatchedError, AlreadyWrappedError):
        assert issubclass(cls, peftkit.PeftkitError)


def test_set_active_unknown_adapter() -> None:
    model = peftkit.wrap(make_model("bert"), "lora")
    with pytest.raises(peftkit.NotWrappedError, match="default"):
        peftkit.set_active(model, "other")


def test_operations_on_unwrapped_model() -> None:
    with pytest.raises(peftkit.NotWrappedError, match="peftkit.wrap"):
        peftkit.set_active(make_model("bert"), "default")
