"""save_adapter / load_adapter: round trips, peft interop, several adapters, the base-model check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import peftkit
from peftkit import registry
from peftkit.errors import AdapterFileError, BaseModelMismatchError, UnknownMethodError
from peftkit.io import load_adapter, read_adapter_dir, save_adapter
from peftkit.methods.lora import LoraOptions, build_lora
from peftkit.state import adapter_layers, adapter_parameters, get_state
from tests.test_io_support import METHOD_OPTIONS, METHODS, logits, trained
from tests.tiny_models import make_model

HEADS = {"bert": ["classifier"], "gpt2": ["score"], "llama": []}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    """``saved(family, method) -> (expected logits, adapter dir)``; each adapter is trained once per module."""
    cache: dict[tuple[str, str], tuple[torch.Tensor, Path]] = {}

    def get(family: str, method: str) -> tuple[torch.Tensor, Path]:
        if (family, method) not in cache:
            model = trained(family, method)
            directory = save_adapter(model, tmp_path_factory.mktemp(f"{family}-{method}") / "adapter")
            cache[family, method] = (logits(model, family), directory)
        return cache[family, method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_reproduces_outputs(family: str, method: str, saved) -> None:
    expected, directory = saved(family, method)
    assert sorted(p.name for p in directory.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "peftkit.json",
    ]
    base = make_model(family)
    assert load_adapter(base, directory) is base
    torch.testing.assert_close(logits(base, family), expected)
    assert not any(p.requires_grad for p in base.parameters()), "loaded for inference: everything frozen"
    assert not any(m.training for m in base.modules()), "new layers must follow the model's eval mode"
    assert get_state(base).active == "default"

    meta = json.loads((directory / "peftkit.json").read_text())
    assert meta["method"] == method and meta["plugin"] is None
    assert meta["heads"]["modules"] == HEADS[family]
    assert meta["base"]["model_type"] == family and meta["options"]["head_modules"] is None


@pytest.mark.parametrize("method", METHODS)
def test_saved_tensors_are_only_adapter_and_head_weights(family: str, method: str, saved) -> None:
    files = read_adapter_dir(saved(family, method)[1])
    base_names = {f"base_model.model.{name}" for name, _ in make_model(family).named_parameters()}
    heads = tuple(f"base_model.model.{h}." for h in HEADS[family])
    for key in files.tensors:
        assert key.startswith(heads) or key not in base_names, f"base weight {key} saved"
    assert any(key.startswith(heads) for key in files.tensors) == bool(HEADS[family])
    assert files.method == method and files.fingerprint["model_type"] == family


def test_adalora_is_saved_truncated_to_the_kept_ranks(tmp_path: Path) -> None:
    model = trained("gpt2", "adalora")
    files = read_adapter_dir(save_adapter(model, tmp_path / "a"))
    pattern = files.peft_config["rank_pattern"]
    assert pattern, "training must have pruned ranks"
    init_r = METHOD_OPTIONS["adalora"]["init_r"]
    for key, mask in pattern.items():
        assert not key.endswith(".default") and len(mask) == init_r
        module = key.rsplit(".", 1)[0]
        kept = sum(mask)
        assert files.tensors[f"base_model.model.{module}.lora_E"].shape == (kept, 1)
        assert files.tensors[f"base_model.model.{module}.lora_A"].shape[0] == kept
        assert files.tensors[f"base_model.model.{module}.lora_B"].shape[1] == kept
    assert sum(sum(mask) for mask in pattern.values()) < init_r * len(pattern)
    live_keys = get_state(model).adapters["default"].handle.peft_config.rank_pattern
    assert all(key.endswith(".default") for key in live_keys), "saving must not rewrite the live config"


def test_several_adapters_on_one_base(saved) -> None:
    (lora_logits, lora_dir), (adapter_logits, adapter_dir) = saved("bert", "lora"), saved("bert", "adapter")
    expected = {"ner": lora_logits, "bottleneck": adapter_logits}
    base = make_model("bert")
    base_logits = logits(base, "bert")
    load_adapter(base, lora_dir, "ner")
    load_adapter(base, adapter_dir, "bottleneck")
    assert set(get_state(base).adapters) == {"ner", "bottleneck"}
    torch.testing.assert_close(logits(base, "bert"), expected["bottleneck"])
    peftkit.set_active(base, "ner")
    torch.testing.assert_close(logits(base, "bert"), expected["ner"])
    peftkit.disable_adapters(base)
    torch.testing.assert_close(logits(base, "bert"), base_logits)
    peftkit.set_active(base, "bottleneck")
    torch.testing.assert_close(logits(base, "bert"), expected["bottleneck"])
    with pytest.raises(peftkit.AlreadyWrappedError):
        load_adapter(base, lora_dir, "ner")


def test_adapters_loaded_for_inference_stay_frozen_when_switched(saved) -> None:
    base = make_model("bert")
    load_adapter(
        base, saved("bert", "lora")[1], name="ner"
    )  # the keyword of the issue; adapter_name= works too
    load_adapter(base, saved("bert", "adapter")[1], adapter_name="bottleneck", is_trainable=True)

    def trainable(name: str) -> bool:
        return any(p.requires_grad for p in adapter_parameters(base, name).values())

    assert not trainable("ner") and trainable("bottleneck")
    peftkit.set_active(base, "ner")
    assert not trainable("ner") and not trainable("bottleneck")
    with peftkit.adapters_disabled(base):
        pass
    assert not trainable("ner")
    peftkit.set_active(base, "bottleneck")
    assert trainable("bottleneck") and not trainable("ner")
    with pytest.raises(peftkit.InvalidOptionError, match="pass only one"):
        load_adapter(make_model("bert"), saved("bert", "lora")[1], "a", adapter_name="b")


def test_load_next_to_a_freshly_wrapped_adapter(saved) -> None:
    expected, directory = saved("gpt2", "lora")
    model = peftkit.wrap(make_model("gpt2"), "adapter")
    load_adapter(model, directory, "loaded", is_trainable=True)
    torch.testing.assert_close(logits(model, "gpt2"), expected)
    assert all(p.requires_grad for p in adapter_parameters(model, "loaded").values())


def test_save_a_named_adapter_and_reject_unknown_names(saved, tmp_path: Path) -> None:
    model = make_model("llama")
    load_adapter(model, saved("llama", "lora")[1], "first")
    peftkit.add_adapter(model, "lora", adapter_name="second", r=2)
    save_adapter(model, tmp_path / "first-again", adapter_name="first")
    assert read_adapter_dir(tmp_path / "first-again").meta["adapter_name"] == "first"
    with pytest.raises(peftkit.NotWrappedError, match="first, second"):
        save_adapter(model, tmp_path / "x", adapter_name="third")
    with pytest.raises(peftkit.NotWrappedError):
        save_adapter(make_model("llama"), tmp_path / "y")


def test_another_model_type_is_refused(saved) -> None:
    with pytest.raises(BaseModelMismatchError) as info:
        load_adapter(make_model("gpt2"), saved("bert", "lora")[1])
    message = str(info.value)
    assert "'bert'" in message and "'gpt2'" in message and "strict=False" in message


def test_same_architecture_other_weights_is_refused(tmp_path: Path, tiny_model_dir) -> None:
    from transformers import BertForTokenClassification

    trained_base = BertForTokenClassification.from_pretrained(tiny_model_dir("bert", seed=0)).eval()
    peftkit.wrap(trained_base, "lora", r=4)
    save_adapter(trained_base, tmp_path / "a")
    expected_digest = read_adapter_dir(tmp_path / "a").fingerprint["digest"]

    other = BertForTokenClassification.from_pretrained(tiny_model_dir("bert", seed=1)).eval()
    with pytest.raises(BaseModelMismatchError) as info:
        load_adapter(other, tmp_path / "a")
    message = str(info.value)
    assert "tiny-bert-0" in message and "tiny-bert-1" in message, "both name_or_path values are named"
    assert expected_digest in message and "weights differ" in message
    assert get_state(other) is None and not list(adapter_layers(other)), "a refused load changes nothing"

    same = BertForTokenClassification.from_pretrained(tiny_model_dir("bert", seed=0)).eval()
    load_adapter(same, tmp_path / "a")  # same weights from the same directory: accepted


def test_strict_false_warns_and_loads(saved) -> None:
    other = make_model("llama", seed=7)
    with pytest.warns(UserWarning, match="strict=False"):
        load_adapter(other, saved("llama", "adapter")[1], strict=False)
    assert get_state(other).active == "default"


def test_failed_load_leaves_the_model_unchanged(saved) -> None:
    from transformers import BertForTokenClassification

    from tests.tiny_models import make_config

    directory = saved("bert", "lora")[1]  # 5 labels
    config = make_config("bert")
    config.num_labels = 3
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()  # same backbone, a 3-label head
    before = logits(model, "bert")
    with pytest.raises(AdapterFileError, match=r"classifier\.(weight|bias).*num_labels=5"):
        load_adapter(model, directory)
    assert get_state(model) is None and not list(adapter_layers(model))
    assert sorted(n for n, _ in model.named_parameters()) == sorted(
        n for n, _ in BertForTokenClassification(config).named_parameters()
    )
    torch.testing.assert_close(logits(model, "bert"), before)


def test_failed_load_keeps_existing_adapters_working(saved, tmp_path: Path) -> None:
    files = read_adapter_dir(saved("bert", "adapter")[1])
    key = next(k for k in files.tensors if "adapter_down" in k and k.endswith("weight"))
    files.tensors[key] = torch.zeros(3, 3)
    peftkit.io.write_adapter_dir(tmp_path / "bad", files.peft_config, files.meta, files.tensors)

    expected, directory = saved("bert", "lora")
    model = load_adapter(make_model("bert"), directory)
    with pytest.raises(AdapterFileError, match="shape"):
        load_adapter(model, tmp_path / "bad", "broken")
    assert set(get_state(model).adapters) == {"default"}
    torch.testing.assert_close(logits(model, "bert"), expected)
    assert not any("broken" in name for name, _ in model.named_parameters())


def test_labels_are_restored(tmp_path: Path) -> None:
    model = make_model("bert")
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    peftkit.wrap(model, "lora")
    save_adapter(model, tmp_path / "a")
    assert read_adapter_dir(tmp_path / "a").meta["heads"]["num_labels"] == 5
    base = load_adapter(make_model("bert"), tmp_path / "a")
    assert base.config.id2label[1] == "B-PER" and base.config.label2id["I-LOC"] == 4


def test_plugin_method_is_recorded_and_required(tmp_path: Path) -> None:
    registry.register_method("toy_lora", LoraOptions, build_lora, source="toy-lora-plugin")
    try:
        model = peftkit.wrap(make_model("bert"), "toy_lora", r=2)
        save_adapter(model, tmp_path / "a")
        files = read_adapter_dir(tmp_path / "a")
        assert files.plugin == "toy-lora-plugin" and files.peft_config["peft_type"] == "TOY_LORA"
        load_adapter(make_model("bert"), tmp_path / "a")
    finally:
        registry.unregister_method("toy_lora")
    with pytest.raises(UnknownMethodError, match="toy_lora.*toy-lora-plugin"):
        load_adapter(make_model("bert"), tmp_path / "a")


def test_never_unpickles(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    directory = saved("gpt2", "lora")[1]

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_adapter(make_model("gpt2"), directory)
