"""A base-model path that holds no model is refused in one line naming the fix, before transformers runs."""

from __future__ import annotations

import pytest

import peftkit
from peftkit.errors import ModelPathError
from peftkit.model_path import check_model_path, model_path_problem
from tests.tiny_models import make_model, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert-base")
    save_tiny_model("bert", path)
    return path


def test_a_model_directory_passes(model_dir):
    assert model_path_problem(model_dir) is None


def test_a_missing_path_says_so_and_suggests_a_sibling(model_dir):
    problem = model_path_problem(model_dir.parent / (model_dir.name + "x"))
    assert "does not exist. Did you mean" in problem and model_dir.name in problem
    assert "config.json" in model_path_problem("/nonexistent/model")


def test_a_file_names_the_directory_that_holds_it(model_dir, tmp_path):
    assert f"pass the model directory that holds it: {str(model_dir)!r}" in model_path_problem(
        model_dir / "config.json"
    )
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert "is a file, not a model directory" in model_path_problem(other)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_path_problem(gguf, allow_gguf=True) is None
    assert model_path_problem(tmp_path, allow_gguf=True).startswith(
        f"Model path {str(tmp_path)!r} holds GGUF files but no config.json: pass the .gguf file itself"
    )


def test_an_adapter_directory_names_its_base_and_load_adapter(model_dir, tmp_path):
    model = make_model("bert")
    model.config._name_or_path = str(model_dir)
    peftkit.save_adapter(peftkit.wrap(model, "lora"), tmp_path / "adapter")
    problem = model_path_problem(tmp_path / "adapter", name="--model-path")
    assert problem.startswith(f"--model-path {str(tmp_path / 'adapter')!r} is an adapter directory")
    assert f"trained on {str(model_dir)!r}" in problem and "peftkit.load_adapter(model, " in problem


def test_a_directory_without_config_is_not_a_model(tmp_path):
    assert "holds no config.json" in model_path_problem(tmp_path)
    assert model_path_problem(tmp_path, needs_config=False) is None


def test_hub_ids_are_left_to_transformers_unless_the_hub_is_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert model_path_problem("some-org/some-model-that-is-not-cached") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "the Hugging Face Hub is offline" in model_path_problem("some-org/some-model-that-is-not-cached")


@pytest.mark.parametrize("kind", ["missing", "file", "adapter"])
def test_load_base_refuses_in_one_line(model_dir, tmp_path, kind):
    if kind == "missing":
        path = "/nonexistent"
    elif kind == "file":
        path = model_dir / "config.json"
    else:
        path = peftkit.save_adapter(peftkit.wrap(make_model("bert"), "lora"), tmp_path / "adapter")
    with pytest.raises(ModelPathError) as info:
        peftkit.load_base(str(path), task="token-classification", num_labels=5)
    assert isinstance(info.value, OSError) and len(str(info.value).splitlines()) == 1
    with pytest.raises(ModelPathError):
        check_model_path(path)
