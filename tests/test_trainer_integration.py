"""A wrapped model under a real ``transformers.Trainer``: callback, saves, checkpoint resume.

* ``peftkit.PeftkitTrainerCallback`` is a top-level name; AdaLoRA trained without it warns once, at
  its second optimizer step.
* ``trainer.save_model()`` writes the adapter (and says so), never a model that plain
  ``from_pretrained`` loads with re-initialised layers.
* Resuming from a ``Trainer`` checkpoint ends on the very weights of an uninterrupted run, for LoRA
  and for AdaLoRA (whose rank allocator state lives outside ``state_dict()``).
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from transformers import (
    AutoModelForTokenClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

import peftkit
from peftkit.training import reset_accelerate_state
from tests.tiny_models import make_batch, make_examples, make_model

#: Slow moving averages (beta 0.99): a resumed run that lost them prunes other ranks (max |dw| ~0.01).
ADALORA = dict(total_step=10, tinit=1, tfinal=2, init_r=8, target_r=2, delta_t=1, beta1=0.99, beta2=0.99)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def wrapped(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    options = ADALORA if method == "adalora" else {}
    return peftkit.wrap(make_model("bert").train(), method, **options)


def make_trainer(out, model, *, callbacks=(), save_steps: int = 0) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        num_train_epochs=2,  # 5 batches per epoch: 10 optimizer steps
        learning_rate=3e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=make_examples(),
        data_collator=default_data_collator,
        callbacks=list(callbacks),
    )


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def logits(model: torch.nn.Module) -> torch.Tensor:
    batch = make_batch("bert", batch=3, seq=7, seed=5)
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_the_callback_is_a_top_level_name():
    assert peftkit.PeftkitTrainerCallback is peftkit.training.PeftkitTrainerCallback
    assert issubclass(peftkit.PeftkitTrainerCallback, TrainerCallback)
    assert "PeftkitTrainerCallback" in peftkit.__all__


class StepWarnings(TrainerCallback):
    """Records, at the end of each optimizer step, how many budget warnings have been issued."""

    def __init__(self, caught: list) -> None:
        self.caught, self.counts = caught, []

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(sum("on_optimizer_step was never called" in str(w.message) for w in self.caught))


def test_adalora_without_the_callback_warns_once_at_its_second_step(tmp_path):
    model = wrapped("adalora")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = StepWarnings(caught)
        make_trainer(tmp_path, model, callbacks=[seen]).train()
    assert seen.counts[:2] == [0, 1]  # noticed in the first forward after the first optimizer step
    assert seen.counts[-1] == 1  # once
    message = next(str(w.message) for w in caught if "never called" in str(w.message))
    assert "PeftkitTrainerCallback" in message and "peftkit.on_optimizer_step(model, step)" in message
    assert peftkit.state.get_state(model).adapters["default"].handle.peft_config.rank_pattern is None


@pytest.mark.parametrize("how", ["callback", "peftkit.training"])
def test_adalora_with_its_budget_steps_does_not_warn(tmp_path, how):
    model = wrapped("adalora")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if how == "callback":
            make_trainer(tmp_path, model, callbacks=[peftkit.PeftkitTrainerCallback()]).train()
        else:
            from torch.utils.data import DataLoader

            from peftkit.config import TrainConfig
            from peftkit.training import train

            loader = DataLoader(make_examples(), batch_size=4, collate_fn=default_data_collator)
            train(model, loader, TrainConfig(output_dir=str(tmp_path), epochs=2, lr=1e-2, log_every=5))
    assert not [w for w in caught if "never called" in str(w.message)]
    assert peftkit.state.get_state(model).adapters["default"].handle.last_step == 10


def test_save_model_writes_the_adapter_and_says_so(tmp_path, caplog):
    model = wrapped("lora")
    trainer = make_trainer(tmp_path / "run", model, callbacks=[peftkit.PeftkitTrainerCallback()])
    trainer.train()
    expected = logits(model)
    with caplog.at_level(logging.INFO, logger="peftkit.pretrained"):
        trainer.save_model(str(tmp_path / "final"))
    files = {p.name for p in (tmp_path / "final").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "peftkit.json"} <= files
    assert not files & {"config.json", "model.safetensors"}  # nothing from_pretrained could load wrong
    with pytest.raises(OSError):  # no config.json: refused, never loaded with re-initialised layers
        AutoModelForTokenClassification.from_pretrained(str(tmp_path / "final"))
    said = [r for r in caplog.records if r.levelno == logging.WARNING and "adapter only" in r.getMessage()]
    assert len(said) == 1 and "peftkit.load_adapter" in said[0].getMessage()
    reloaded = peftkit.load_adapter(make_model("bert"), tmp_path / "final")
    torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=1e-6)


def test_a_folded_model_saves_as_transformers_does(tmp_path):
    from peftkit.merge.fold import fold_adapter

    model = wrapped("lora")
    plain = fold_adapter(model)
    plain.save_pretrained(str(tmp_path / "merged"))
    loaded = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "merged"))
    torch.testing.assert_close(logits(loaded), logits(plain), rtol=0, atol=1e-6)


class AllocatorAt(TrainerCallback):
    """Keeps a copy of the AdaLoRA allocator's moving averages after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.tensors = step, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        handle = peftkit.state.get_state(model).adapters["default"].handle
        if state.global_step == self.step and hasattr(handle, "training_state"):
            self.tensors = {
                k: v.clone() for k, v in handle.training_state().items() if isinstance(v, torch.Tensor)
            }


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_resume_from_a_trainer_checkpoint_is_exact(tmp_path, method, caplog):
    model, allocator = wrapped(method), AllocatorAt(6)
    make_trainer(
        tmp_path / "a", model, callbacks=[peftkit.PeftkitTrainerCallback(), allocator], save_steps=3
    ).train()
    expected = trainable(model)
    checkpoint = tmp_path / "a" / "checkpoint-3"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "peftkit.json", "model.safetensors", "optimizer.pt"} <= files
    assert "config.json" not in files
    reset_accelerate_state()

    resumed, resumed_allocator = wrapped(method), AllocatorAt(6)
    with caplog.at_level(logging.WARNING):
        make_trainer(
            tmp_path / "b",
            resumed,
            callbacks=[peftkit.PeftkitTrainerCallback(), resumed_allocator],
            save_steps=3,
        ).train(resume_from_checkpoint=str(checkpoint))
    assert not [r for r in caplog.records if "missing keys" in r.getMessage()]
    got = trainable(resumed)
    assert got.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not different, different
    if method == "adalora":
        assert allocator.tensors and allocator.tensors.keys() == resumed_allocator.tensors.keys()
        assert all(torch.equal(allocator.tensors[k], resumed_allocator.tensors[k]) for k in allocator.tensors)
        handles = [peftkit.state.get_state(m).adapters["default"].handle for m in (model, resumed)]
        assert handles[0].peft_config.rank_pattern == handles[1].peft_config.rank_pattern
        assert handles[0].last_step == handles[1].last_step == 10


def test_a_checkpoint_is_also_an_adapter_directory(tmp_path):
    model = wrapped("adalora")
    make_trainer(tmp_path, model, callbacks=[peftkit.PeftkitTrainerCallback()], save_steps=10).train()
    reloaded = peftkit.load_adapter(make_model("bert"), tmp_path / "checkpoint-10")
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=1e-6)
