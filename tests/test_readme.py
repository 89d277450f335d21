"""The README's Python examples run as written (``path`` pointing at a tiny BERT checkpoint)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import BertModel

import peftkit
from tests.tiny_models import make_config

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block under the README section ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


@pytest.fixture
def bert_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tiny BERT encoder without a task head (like all-MiniLM-L6-v2); the cwd is a temp dir."""
    torch.manual_seed(0)
    BertModel(make_config("bert")).save_pretrained(tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    return str(tmp_path / "base")


def run_example(heading: str, path: str, **given: object) -> dict:
    namespace = {"path": path, "peftkit": peftkit, **given}  # later snippets continue the first one's imports
    exec(compile(python_block(heading), f"README.md ({heading})", "exec"), namespace)
    return namespace


def test_python_api_example(bert_checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    namespace = run_example("## Python API", bert_checkpoint)
    assert "trainable" in capsys.readouterr().out  # the printed summary
    model = namespace["model"]
    assert peftkit.active_adapter(model) == "other"
    for name in ("ner-lora", "other"):
        assert (tmp_path / "out" / name / "adapter_model.safetensors").is_file()


def test_trainer_example(bert_checkpoint: str, tmp_path: Path) -> None:
    from peftkit.training import reset_accelerate_state
    from tests.tiny_models import make_batch

    batch = make_batch("bert", batch=16, seq=8, seed=1)
    train_ds = [{k: v[i] for k, v in batch.items()} for i in range(16)]
    reset_accelerate_state()
    try:
        model = run_example("## With transformers.Trainer", bert_checkpoint, train_ds=train_ds)["model"]
    finally:
        reset_accelerate_state()
    assert peftkit.state.get_state(model).adapters["default"].handle.last_step == 20
    saved = {p.name for p in (tmp_path / "out" / "ner-adalora").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "peftkit.json"} <= saved
    assert "config.json" not in saved
    assert (tmp_path / "out" / "trainer" / "checkpoint-10" / "model.safetensors").is_file()


def test_8bit_and_4bit_example(bert_checkpoint: str) -> None:
    pytest.importorskip("bitsandbytes")
    namespace = run_example("## 8-bit and 4-bit bases", bert_checkpoint)
    model, small, nf4 = namespace["model"], namespace["small"], namespace["nf4"]
    assert any(p.dtype == torch.int8 for p in model.parameters())
    assert model.classifier.weight.dtype == torch.float32 and model.classifier.weight.requires_grad
    assert any(p.dtype == torch.int8 for p in small.parameters())
    assert small.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert any(p.dtype == torch.uint8 for p in nf4.parameters())  # packed NF4 codes
    for base in (small, nf4):
        assert base.classifier.weight.dtype == torch.float32 and base.classifier.weight.requires_grad


def test_every_test_the_readme_cites_exists() -> None:
    text = README.read_text(encoding="utf-8")
    root = README.parent
    cited = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)`((?:, `::\w+`)*)", text)
    assert len(cited) > 10, "the Guarantees table cites its tests"
    for path, first, more in cited:
        source = (root / path).read_text(encoding="utf-8")
        for name in [first, *re.findall(r"::\w+", more)]:
            if name:
                assert f"def {name[2:]}(" in source, f"README cites {path}{name}, which does not exist"
