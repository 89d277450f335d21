"""Numerical faults in the real training loop: stopped at the bad step, weights untouched, reported clearly.

``tests/test_training_faults.py`` checks :class:`NumericGuard` alone and
``tests/test_training_loop.py`` a NaN *loss* and a loss multiplied by 1e5 through the loop;
``tests/test_reliability_crash.py`` a NaN through a real subprocess and its resume. Here: NaN
*gradients* behind a finite loss, an infinite loss inside an accumulation window, a genuinely too
high learning rate (no mocking), and that the model in memory still holds the last good weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import peftkit
from peftkit.config import TrainConfig
from peftkit.errors import TrainingError
from peftkit.training import build_accelerator, train
from tests.tiny_models import make_batch, make_model

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def data(n: int = 16) -> list[dict[str, torch.Tensor]]:
    batch = make_batch("bert", batch=n, seq=8, seed=1)
    batch["labels"] = batch["input_ids"] % 5
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def model() -> torch.nn.Module:
    base = make_model("bert").train()
    torch.manual_seed(0)
    return peftkit.wrap(base, "lora", r=4)


def fit(tmp_path: Path, net: torch.nn.Module, **overrides) -> None:
    settings = {"epochs": 2, "batch_size": 4, "lr": 5e-3, "checkpoint_every": 1, "keep_checkpoints": 2}
    config = TrainConfig(output_dir=str(tmp_path), **{**settings, **overrides})
    train(net, DataLoader(data(), batch_size=4), config, accelerator=build_accelerator(config))


def trainable(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


def assert_holds_checkpoint(net: torch.nn.Module, checkpoint: Path) -> None:
    """The model in memory still holds the weights of ``checkpoint`` (the bad step changed nothing)."""
    stored = load_file(str(checkpoint / "model.safetensors"))
    current = trainable(net)
    assert stored.keys() == current.keys()
    for name, value in current.items():
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(value, stored[name], rtol=0, atol=0, msg=name)


class PoisonGradients:
    """Backward hook turning one parameter's gradient into NaN during the n-th backward pass."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return grad * float("nan") if self.calls == self.n else grad


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0], ids=["clipping", "no-clipping"])
def test_nan_gradients_behind_a_finite_loss_stop_the_run(tmp_path: Path, max_grad_norm: float) -> None:
    net = model()
    lora_b = next(p for n, p in net.named_parameters() if "lora_B" in n)
    lora_b.register_hook(PoisonGradients(3))
    with pytest.raises(TrainingError) as info:
        fit(tmp_path, net, max_grad_norm=max_grad_norm)
    message = str(info.value)
    kept = tmp_path / "checkpoints" / "step-2"
    assert "Non-finite gradient norm (nan) at optimizer step 3" in message, message
    assert "epoch 0, batch 2 of the epoch" in message and str(kept) in message and "--resume" in message
    assert sorted(p.name for p in kept.parent.iterdir()) == ["step-1", "step-2"]
    assert_holds_checkpoint(net, kept)


def test_inf_loss_inside_an_accumulation_window_names_the_micro_batch(tmp_path: Path, monkeypatch) -> None:
    import peftkit.training.loop as loop_module

    calls = {"n": 0}

    def loss(net, batch):
        calls["n"] += 1
        value = net(**batch).loss
        return value * float("inf") if calls["n"] == 4 else value

    monkeypatch.setattr(loop_module, "_default_loss", loss)
    net = model()
    with pytest.raises(TrainingError) as info:
        fit(tmp_path, net, grad_accum=2)
    message = str(info.value)
    assert "Non-finite loss (inf) at optimizer step 2" in message, message
    assert "epoch 0, batch 3 of the epoch (process 0)" in message
    assert_holds_checkpoint(net, tmp_path / "checkpoints" / "step-1")


def test_a_learning_rate_far_too_high_is_reported_as_such(tmp_path: Path) -> None:
    """No mocking: lr=1000 without clipping makes the loss explode (or overflow) within a few steps."""
    net = model()
    with pytest.raises(TrainingError) as info:
        fit(tmp_path, net, lr=1000.0, max_grad_norm=0.0, epochs=1)
    message = str(info.value)
    assert "learning rate" in message and "--lr" in message, message
    assert "exploded at optimizer step" in message or "Non-finite" in message
    step = int(message.split("optimizer step ")[1].split(",")[0])
    kept = tmp_path / "checkpoints" / f"step-{step - 1}"
    assert str(kept) in message and kept.is_dir()
    assert_holds_checkpoint(net, kept)
    assert math.isfinite(float(torch.stack([v.abs().max() for v in trainable(net).values()]).max()))
