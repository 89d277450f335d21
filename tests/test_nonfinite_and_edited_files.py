"""Non-finite or absurd values are refused wherever they enter; an edited adapter_config.json is read as peft reads it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
from peft import PeftModel

import peftkit
from peftkit import cli
from peftkit.errors import AdapterFileError, InvalidOptionError
from tests.tiny_models import make_batch, make_model


def saved_lora(tmp_path: Path, name: str = "a", seed: int = 0, **options) -> Path:
    torch.manual_seed(seed)
    model = peftkit.wrap(make_model("bert"), "lora", **options)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    return peftkit.save_adapter(model, tmp_path / name)


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    batch = make_batch("bert")
    batch.pop("labels")
    return model(**batch).logits


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_combine_refuses_non_finite_weights_and_writes_nothing(tmp_path: Path, weight: str, capsys) -> None:
    a, b = saved_lora(tmp_path, "a", 0), saved_lora(tmp_path, "b", 1)
    assert (
        cli.main(["combine", str(a), str(b), "--weights", weight, "1", "--out", str(tmp_path / "mix")]) == 1
    )
    assert "must be finite" in capsys.readouterr().err
    assert not (tmp_path / "mix").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"r": 10**9}, r"r=1000000000 would need .* GiB .* use r <= 32"),
        ({"alpha": 1e308}, r"alpha / r = 1.25e\+307, beyond 10000"),
        ({"alpha": math.nan}, r"alpha=nan must be a finite number"),
        ({"dropout": math.inf}, r"dropout=inf must be a finite number"),
    ],
)
def test_absurd_options_are_refused_before_anything_is_allocated(options: dict, message: str) -> None:
    model = make_model("bert")
    with pytest.raises(InvalidOptionError, match=message):
        peftkit.wrap(model, "lora", **options)
    assert peftkit.state.get_state(model) is None or not peftkit.state.get_state(model).adapters


def test_a_rank_above_the_layer_width_works_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        peftkit.wrap(make_model("bert"), "lora", r=40)
    assert "r=40 exceeds min(in, out)=32" in caplog.text


@pytest.mark.parametrize(("field", "value"), [("lora_alpha", 1e308), ("r", 1e12)])
def test_absurd_values_in_adapter_config_are_refused(tmp_path: Path, field: str, value: float) -> None:
    directory = saved_lora(tmp_path)
    config = json.loads((directory / "adapter_config.json").read_text())
    config[field] = value
    (directory / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFileError, match="not valid for method 'lora'"):
        peftkit.load_adapter(make_model("bert"), directory)


def test_nan_tensors_in_a_peft_written_directory_are_refused(tmp_path: Path) -> None:
    directory = saved_lora(tmp_path)
    peft_model = PeftModel.from_pretrained(make_model("bert"), str(directory))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(AdapterFileError, match=rf"{key}.*NaN or infinite"):
        peftkit.load_adapter(make_model("bert"), tmp_path / "peft")


def test_an_edited_adapter_config_is_read_as_peft_reads_it(tmp_path: Path, caplog) -> None:
    directory = saved_lora(tmp_path, r=4, alpha=8.0)
    config = json.loads((directory / "adapter_config.json").read_text())
    config.update(lora_alpha=24.0, use_rslora=True)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        ours = logits(peftkit.load_adapter(make_model("bert"), directory))
    theirs = logits(PeftModel.from_pretrained(make_model("bert"), str(directory)))
    torch.testing.assert_close(ours, theirs)
    assert "sets alpha=24.0 where peftkit.json recorded 8.0" in caplog.text
    assert peftkit.read_adapter_dir(directory).options["use_rslora"] is True
