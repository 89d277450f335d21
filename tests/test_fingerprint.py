"""base_fingerprint: deterministic, blind to adapters / heads / 8-bit, sensitive to the base weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftkit
from peftkit.io import base_fingerprint, describe_fingerprint, fingerprints_match, load_adapter, save_adapter
from tests.test_io_support import METHOD_OPTIONS, METHODS, logits, train_briefly
from tests.tiny_models import MODEL_CLASSES, make_config, make_model


def test_deterministic_and_json_friendly(family: str) -> None:
    import json

    first, second = base_fingerprint(make_model(family)), base_fingerprint(make_model(family))
    assert first == second and json.loads(json.dumps(first)) == first
    assert first["model_type"] == family and first["architecture"] == MODEL_CLASSES[family].__name__
    assert fingerprints_match(first, second)
    assert first["digest"] in describe_fingerprint(first)


def test_other_seed_or_family_differs(family: str) -> None:
    reference = base_fingerprint(make_model(family))
    other_seed = base_fingerprint(make_model(family, seed=1))
    assert other_seed["structure"] == reference["structure"] and other_seed["weights"] != reference["weights"]
    assert not fingerprints_match(reference, other_seed)
    other_family = base_fingerprint(make_model("gpt2" if family != "gpt2" else "bert"))
    assert not fingerprints_match(reference, other_family)
    assert not fingerprints_match(reference, None)


def test_a_single_changed_weight_is_noticed() -> None:
    model = make_model("llama")
    before = base_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[3] += 0.5
    assert not fingerprints_match(before, base_fingerprint(model))


@pytest.mark.parametrize("method", METHODS)
def test_adapters_do_not_change_the_fingerprint(family: str, method: str) -> None:
    reference = base_fingerprint(make_model(family))
    model = peftkit.wrap(make_model(family), method, **METHOD_OPTIONS[method])
    train_briefly(model, family, steps=1)
    peftkit.add_adapter(model, "lora", adapter_name="second")
    assert base_fingerprint(model) == reference


def test_task_heads_are_ignored() -> None:
    config = make_config("bert")
    config.num_labels = 2
    torch.manual_seed(0)
    other_head = MODEL_CLASSES["bert"](config)
    assert fingerprints_match(base_fingerprint(other_head), base_fingerprint(make_model("bert")))


def test_loading_from_disk_matches_and_records_the_path(family: str, tiny_model_dir) -> None:
    directory = tiny_model_dir(family)
    loaded = MODEL_CLASSES[family].from_pretrained(directory)
    fingerprint = base_fingerprint(loaded)
    assert fingerprint["name_or_path"] == directory
    assert fingerprints_match(fingerprint, base_fingerprint(make_model(family)))


TASKS = {"bert": "token-classification", "gpt2": "sequence-classification", "llama": "causal-lm"}


def _load_8bit(family: str, directory: str):
    pytest.importorskip("bitsandbytes")
    from peftkit.quantization.loading import load_base

    try:
        model = load_base(directory, task=TASKS[family], load_in_8bit=True)
    except Exception as exc:  # bitsandbytes without a usable backend
        pytest.skip(f"8-bit loading unavailable: {exc}")
    assert any(p.dtype == torch.int8 for p in model.parameters()), "the base must really be 8-bit"
    return model.eval()


def test_fp32_and_8bit_bases_have_the_same_fingerprint(family: str, tiny_model_dir) -> None:
    directory = tiny_model_dir(family)
    fp32 = base_fingerprint(MODEL_CLASSES[family].from_pretrained(directory))
    int8 = base_fingerprint(_load_8bit(family, directory))
    assert int8 == fp32  # GPT-2 Conv1D (in, out) and Linear8bitLt (out, in) normalise to the same shapes


def test_adapter_round_trip_on_an_8bit_base(tiny_model_dir, tmp_path: Path) -> None:
    directory = tiny_model_dir("gpt2")
    model = peftkit.wrap(_load_8bit("gpt2", directory), "lora", r=4)
    train_briefly(model, "gpt2", steps=2)
    expected = logits(model, "gpt2")
    save_adapter(model, tmp_path / "a")

    base = load_adapter(_load_8bit("gpt2", directory), tmp_path / "a")
    torch.testing.assert_close(logits(base, "gpt2"), expected)
    fp32 = load_adapter(MODEL_CLASSES["gpt2"].from_pretrained(directory).eval(), tmp_path / "a")  # accepted
    torch.testing.assert_close(logits(fp32, "gpt2"), expected, atol=0.05, rtol=0.05)  # 8-bit vs fp32 base


def test_a_bfloat16_load_matches_its_float32_checkpoint(family: str, tiny_model_dir) -> None:
    directory = tiny_model_dir(family)
    fp32 = base_fingerprint(MODEL_CLASSES[family].from_pretrained(directory))
    bf16 = base_fingerprint(MODEL_CLASSES[family].from_pretrained(directory, dtype=torch.bfloat16))
    assert bf16["dtype"] == "bfloat16" and fp32["dtype"] == "float32"
    assert bf16["weights"] != fp32["weights"]  # float16 rounding of bf16 values: not what fp32 gives
    assert fingerprints_match(fp32, bf16) and fingerprints_match(bf16, fp32)
    other = base_fingerprint(make_model(family, seed=1).to(torch.bfloat16))
    assert not fingerprints_match(fp32, other)


def test_float32_bases_are_still_compared_at_float16_precision() -> None:
    model = make_model("bert")
    assert torch.all(model.bert.embeddings.LayerNorm.weight == 1.0)
    reference = base_fingerprint(model)
    with torch.no_grad():  # +0.2%: changes the float16 rounding, not the bfloat16 one
        model.bert.embeddings.LayerNorm.weight[0] = 1.002
    changed = base_fingerprint(model)
    assert changed["weights_bf16"] == reference["weights_bf16"] and changed["weights"] != reference["weights"]
    assert not fingerprints_match(reference, changed)  # both float32: bfloat16 agreement is not enough


def test_an_adapter_trained_in_float32_loads_onto_a_bfloat16_base(tiny_model_dir, tmp_path: Path) -> None:
    directory = tiny_model_dir("bert")
    model = peftkit.wrap(MODEL_CLASSES["bert"].from_pretrained(directory), "lora", r=4)
    train_briefly(model, "bert", steps=2)
    expected = logits(model.eval(), "bert")
    save_adapter(model, tmp_path / "a")
    base = MODEL_CLASSES["bert"].from_pretrained(directory, dtype=torch.bfloat16).eval()
    loaded = load_adapter(base, tmp_path / "a")  # strict: no BaseModelMismatchError
    torch.testing.assert_close(logits(loaded, "bert").float(), expected, atol=0.05, rtol=0.05)
