"""PeftkitTrainerCallback runs peftkit's per-step hooks inside transformers.Trainer."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments, default_data_collator

import peftkit
from peftkit.training import PeftkitTrainerCallback
from tests.tiny_models import make_examples, make_model

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def trainer(tmp_path, model: torch.nn.Module, grad_accum: int, epochs: int = 2) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=epochs,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=make_examples(),
        data_collator=default_data_collator,
        callbacks=[PeftkitTrainerCallback()],
    )


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_called_once_per_optimizer_step_with_counted_steps(tmp_path, monkeypatch, grad_accum):
    torch.manual_seed(0)
    model = peftkit.wrap(make_model("bert").train(), "lora")
    calls = []

    def record(seen_model, step):
        assert any(p.grad is not None for p in seen_model.parameters() if p.requires_grad)  # before zero_grad
        calls.append((seen_model, step))

    monkeypatch.setattr(peftkit, "on_optimizer_step", record)
    run = trainer(tmp_path, model, grad_accum)
    run.train()
    # 5 batches per epoch: ceil(5 / grad_accum) optimizer steps per epoch, 2 epochs.
    assert run.state.global_step == 2 * -(-5 // grad_accum)
    assert [step for _, step in calls] == list(range(1, run.state.global_step + 1))
    assert all(seen is model for seen, _ in calls)  # the user's (unwrapped) model


def test_adalora_budget_runs_under_trainer_without_a_manual_call(tmp_path):
    torch.manual_seed(0)
    model = peftkit.wrap(
        make_model("bert").train(), "adalora", total_step=6, tinit=1, tfinal=1, init_r=4, target_r=1
    )
    handle = peftkit.state.get_state(model).adapters["default"].handle
    assert handle.peft_config.rank_pattern is None
    trainer(tmp_path, model, grad_accum=2, epochs=2).train()  # 3 steps per epoch -> 6 steps
    pattern = handle.peft_config.rank_pattern
    assert pattern is not None  # the final budget was fixed at step total_step - tfinal
    kept = sum(sum(mask) for mask in pattern.values())
    assert kept == len(pattern) * 1  # target_r=1 singular value per adapted matrix on average
    assert handle.last_step == 6
