"""Checkpoints: atomic publication, retention, completeness, trainable-only size, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import accelerate.accelerator
import pytest
import torch
from torch.utils.data import DataLoader

import peftkit
from peftkit.config import TrainConfig
from peftkit.errors import TrainingError
from peftkit.training import (
    CheckpointManager,
    build_accelerator,
    checkpoint_dir_size,
    find_latest_checkpoint,
    reset_accelerate_state,
    train,
)
from peftkit.training.checkpoint import STATE_FILE
from tests.tiny_models import make_batch, make_model


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def loader(n: int = 16) -> DataLoader:
    batch = make_batch("bert", batch=n, seq=8, seed=1)
    return DataLoader([{k: v[i] for k, v in batch.items()} for i in range(n)], batch_size=4, shuffle=True)


def wrapped() -> torch.nn.Module:
    torch.manual_seed(0)
    return peftkit.wrap(make_model("bert").train(), "lora")


def fit(tmp_path, **overrides):
    reset_accelerate_state()
    config = TrainConfig(output_dir=str(tmp_path), **{"epochs": 1, "batch_size": 4, **overrides})
    return train(wrapped(), loader(), config, accelerator=build_accelerator(config))


def test_failure_inside_save_keeps_previous_checkpoint_and_leaves_no_complete_looking_dir(
    tmp_path, monkeypatch
):
    real = accelerate.accelerator.save_accelerator_state
    calls = {"n": 0}

    def flaky(output_dir, *args, **kwargs):
        calls["n"] += 1
        result = real(output_dir, *args, **kwargs)  # the files are written...
        if calls["n"] == 2:
            raise OSError("No space left on device")  # ...then the save fails
        return result

    monkeypatch.setattr(accelerate.accelerator, "save_accelerator_state", flaky)
    with pytest.raises(OSError, match="No space left"):
        fit(tmp_path, checkpoint_every=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2"]  # no step-4, no .tmp-step-4
    assert find_latest_checkpoint(root) == root / "step-2"
    assert json.loads((root / "step-2" / STATE_FILE).read_text())["loop"]["global_step"] == 2

    monkeypatch.setattr(accelerate.accelerator, "save_accelerator_state", real)
    result = fit(tmp_path, checkpoint_every=2, resume=True)  # the kept checkpoint still resumes
    assert result.global_step == 4


def test_directories_without_state_file_are_not_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-9").mkdir(parents=True)  # half-written by some other tool
    (root / "step-9" / "model.safetensors").write_bytes(b"")
    (root / ".tmp-step-12").mkdir()
    (root / "step-3").mkdir()
    (root / "step-3" / STATE_FILE).write_text("{}")
    assert find_latest_checkpoint(root) == root / "step-3"
    assert find_latest_checkpoint(tmp_path / "missing") is None


def test_stale_temporary_directories_are_removed(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step-4"
    stale.mkdir(parents=True)
    (stale / "optimizer.bin").write_bytes(b"partial")
    fit(tmp_path, checkpoint_every=2)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4"]


def prepared_manager(root, model, groups: int = 1, keep: int = 2) -> CheckpointManager:
    """A checkpoint manager for ``model`` prepared with AdamW (its trainable weights in ``groups`` groups)."""
    reset_accelerate_state()
    acc = build_accelerator(TrainConfig())
    trainable = [p for p in model.parameters() if p.requires_grad]
    model, _ = acc.prepare(
        model, torch.optim.AdamW([{"params": trainable[i::groups]} for i in range(groups)])
    )
    return CheckpointManager(root, acc, acc.unwrap_model(model), keep=keep)


def test_saving_the_same_step_again_replaces_it(tmp_path):
    manager = prepared_manager(tmp_path, wrapped(), keep=3)
    manager.save(5, {"loop": {"tag": "first"}}, {})
    manager.save(5, {"loop": {"tag": "second"}}, {})
    assert [p.name for p in tmp_path.iterdir()] == ["step-5"]
    payload, _ = manager.load(tmp_path / "step-5")
    assert payload["loop"]["tag"] == "second"


def test_a_crash_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    manager = prepared_manager(tmp_path, wrapped(), keep=1)
    manager.save(2, {"loop": {}}, {})
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):  # worst case: the state file goes first, then the process dies
        if (Path(path) / STATE_FILE).is_file():
            (Path(path) / STATE_FILE).unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        manager.save(4, {"loop": {}}, {})  # publishes step-4, then dies while deleting step-2
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".old-step-2", "step-4"]  # nothing named step-<N> without its state file
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step-4"

    CheckpointManager(tmp_path, manager.accelerator, manager.model)  # the next run tidies up
    assert [p.name for p in tmp_path.iterdir()] == ["step-4"]


def test_loading_a_non_checkpoint_names_the_fix(tmp_path):
    acc = build_accelerator(TrainConfig())
    model = acc.prepare(wrapped())
    with pytest.raises(TrainingError, match="not a complete peftkit checkpoint.*--resume"):
        CheckpointManager(tmp_path, acc, model).load(tmp_path)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"r": 8}, r"lora_A.default.weight has shape \(4, 32\) in the checkpoint but \(8, 32\) in the model"),
        ({"target_modules": ["query"]}, r"unexpected: \['bert.encoder.layer.0.attention.self.value.lora_A"),
    ],
    ids=["other-rank", "other-targets"],
)
def test_resuming_with_other_adapter_options_names_the_tensor_and_the_fix(tmp_path, options, expected):
    torch.manual_seed(0)
    prepared_manager(tmp_path, peftkit.wrap(make_model("bert").train(), "lora", r=4)).save(
        2, {"loop": {}}, {}
    )
    torch.manual_seed(0)
    other = peftkit.wrap(make_model("bert").train(), "lora", **{"r": 4, **options})
    with pytest.raises(TrainingError, match=expected) as caught:
        prepared_manager(tmp_path, other).load(tmp_path / "step-2")
    assert "resume with the same method and options (r, target modules" in str(caught.value)
    assert "damaged" not in str(caught.value)


def test_a_checkpoint_whose_optimizer_does_not_fit_is_not_called_damaged(tmp_path):
    prepared_manager(tmp_path, wrapped(), groups=1).save(2, {"loop": {}}, {})
    with pytest.raises(TrainingError, match="does not fit this run.*same method and options") as caught:
        prepared_manager(tmp_path, wrapped(), groups=2).load(tmp_path / "step-2")
    assert "damaged" not in str(caught.value)


def test_resume_from_an_explicit_checkpoint(tmp_path):
    fit(tmp_path / "a", checkpoint_every=1, keep_checkpoints=5)
    result = fit(tmp_path / "b", log_every=1, resume_from=str(tmp_path / "a" / "checkpoints" / "step-2"))
    assert result.global_step == 4
    assert len(result.history) == 2  # only steps 3 and 4 ran


def test_trainable_only_checkpoints_are_smaller(tmp_path):
    fit(tmp_path / "small", checkpoint_every=4)
    fit(tmp_path / "full", checkpoint_every=4, checkpoint_trainable_only=False)
    small = checkpoint_dir_size(tmp_path / "small" / "checkpoints" / "step-4")
    full = checkpoint_dir_size(tmp_path / "full" / "checkpoints" / "step-4")
    weights = {
        kind: (tmp_path / kind / "checkpoints" / "step-4" / "model.safetensors").stat().st_size
        for kind in ("small", "full")
    }
    assert weights["small"] * 5 < weights["full"]
    assert small < full
