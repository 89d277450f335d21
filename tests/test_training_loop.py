"""The shared Accelerate training loop: learning, accumulation, exact resume, faults, signals."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader

import peftkit
from peftkit.config import TrainConfig
from peftkit.errors import ConfigError, TrainingError
from peftkit.training import (
    build_accelerator,
    find_latest_checkpoint,
    planned_optimizer_steps,
    reset_accelerate_state,
    train,
)
from peftkit.training.records import resume_command
from tests.tiny_models import make_batch, make_model


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; every run in these tests starts from scratch."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def samples(family: str = "bert", n: int = 24, seq: int = 8, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    batch = make_batch(family, batch=n, seq=seq, seed=seed)
    if family == "bert":  # learnable token labels: a function of the token id
        batch["labels"] = batch["input_ids"] % 5
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def wrapped(family: str = "bert", method: str = "lora", **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return peftkit.wrap(make_model(family).train(), method, **options)


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(tmp_path, name: str, *, data=None, model=None, collate_fn=None, shuffle=True, **overrides):
    """One train() call with a fresh Accelerate state; returns (model, result)."""
    reset_accelerate_state()
    settings = {"epochs": 2, "batch_size": 4, "lr": 5e-3, "log_every": 1, "seed": 7, **overrides}
    config = TrainConfig(output_dir=str(tmp_path / name), **settings)
    model = model if model is not None else wrapped()
    loader = DataLoader(
        data or samples(), batch_size=config.batch_size, shuffle=shuffle, collate_fn=collate_fn
    )
    result = train(model, loader, config, accelerator=build_accelerator(config))
    return model, result


def test_a_few_steps_lower_the_loss(tmp_path):
    data = samples(n=16)
    _, result = run(tmp_path, "learn", data=data, epochs=6, lr=5e-2, max_grad_norm=0.0)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert result.global_step == 24 == len(losses)
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert not result.interrupted and result.exit_code == 0


def test_logs_loss_lr_and_tokens_per_second(tmp_path):
    _, result = run(tmp_path, "log", epochs=1, log_every=2)
    lines = [json.loads(x) for x in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    for record in lines:
        assert record["tokens"] == 2 * 4 * 8  # two steps of 4 samples x 8 non-padding tokens
        assert record["tokens_per_s"] > 0 and record["lr"] > 0 and record["grad_norm"] >= 0
    assert (tmp_path / "log" / "config.yaml").is_file()


def test_padding_tokens_are_not_counted(tmp_path):
    data = samples(n=8)
    for sample in data:
        sample["attention_mask"][5:] = 0
    _, result = run(tmp_path, "pad", data=data, epochs=1, log_every=1)
    assert all(r["tokens"] == 4 * 5 for r in result.history if "tokens" in r)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_gradient_accumulation_matches_a_larger_batch(tmp_path, family):
    data = samples(family, n=16)
    common = {"epochs": 1, "shuffle": False, "lr": 1e-2, "max_grad_norm": 0.0, "seed": 3}
    big, r_big = run(
        tmp_path, "big", data=data, model=without_dropout(wrapped(family)), batch_size=8, **common
    )
    small, r_small = run(
        tmp_path,
        "acc",
        data=data,
        model=without_dropout(wrapped(family)),
        batch_size=4,
        grad_accum=2,
        **common,
    )
    assert r_big.global_step == r_small.global_step == 2
    big.eval(), small.eval()
    for name, value in trainable(big).items():
        torch.testing.assert_close(trainable(small)[name], value, rtol=1e-5, atol=1e-6)


def test_last_short_accumulation_window_still_steps(tmp_path):
    # 5 batches per epoch with grad_accum=2: steps after batches 2, 4 and 5.
    _, result = run(tmp_path, "short", data=samples(n=20), epochs=2, grad_accum=2)
    assert result.global_step == 6 == planned_optimizer_steps(5, TrainConfig(epochs=2, grad_accum=2))


class InterruptAt:
    """collate_fn that sends SIGINT to this process when building the n-th batch."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, items):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return torch.utils.data.default_collate(items)


@pytest.mark.parametrize(
    ("method", "options", "grad_accum", "trainable_only"),
    [
        ("lora", {}, 1, True),
        ("lora", {}, 2, False),
        # total_step beyond the run: the allocator's importance averages are still live at the end.
        ("adalora", {"total_step": 30, "tinit": 2, "tfinal": 2, "init_r": 6, "target_r": 2}, 1, True),
    ],
)
def test_resume_after_ctrl_c_reaches_identical_weights(
    tmp_path, method, options, grad_accum, trainable_only, python_sigint
):
    data = samples(n=16)
    settings = {"epochs": 2, "grad_accum": grad_accum, "checkpoint_trainable_only": trainable_only}
    full, r_full = run(tmp_path, "full", data=data, model=wrapped("bert", method, **options), **settings)

    # SIGINT while building batch 6 (batch 1 of epoch 1, 4 batches per epoch): the loop finishes the step,
    # saves a checkpoint and returns; the resumed run skips the consumed batches of epoch 1.
    _, r_stop = run(
        tmp_path, "resumed", data=data, model=wrapped("bert", method, **options), collate_fn=InterruptAt(6),
        checkpoint_every=100, **settings,
    )  # fmt: skip
    assert r_stop.interrupted and r_stop.stop_signal == "SIGINT" and r_stop.exit_code == 130
    assert r_stop.global_step < r_full.global_step
    assert r_stop.last_checkpoint.name == f"step-{r_stop.global_step}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    resumed, r_res = run(
        tmp_path, "resumed", data=data, model=wrapped("bert", method, **options), resume=True,
        checkpoint_every=100, **settings,
    )  # fmt: skip
    assert r_res.global_step == r_full.global_step and not r_res.interrupted
    expected = trainable(full)
    for name, value in trainable(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    if method == "adalora":
        ours, theirs = (peftkit.state.get_state(m).adapters["default"].handle for m in (resumed, full))
        assert ours.peft_config.rank_pattern == theirs.peft_config.rank_pattern
        assert ours.tuner.rankallocator.exp_avg_unc.keys() == theirs.tuner.rankallocator.exp_avg_unc.keys()
        for name, value in ours.tuner.rankallocator.exp_avg_unc.items():
            torch.testing.assert_close(value, theirs.tuner.rankallocator.exp_avg_unc[name], rtol=0, atol=1e-7)


def test_periodic_checkpoints_keep_the_newest(tmp_path):
    _, result = run(tmp_path, "keep", epochs=2, checkpoint_every=2, keep_checkpoints=2)
    root = tmp_path / "keep" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-10", "step-12"]
    assert result.last_checkpoint == find_latest_checkpoint(root) == root / "step-12"


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    _, result = run(tmp_path, "fresh", epochs=1, resume=True)
    assert result.global_step == 6


def test_resume_onto_other_frozen_weights_is_refused(tmp_path):
    run(tmp_path, "fp", epochs=1, checkpoint_every=3)
    torch.manual_seed(123)
    other = peftkit.wrap(make_model("bert", seed=5).train(), "lora")
    with pytest.raises(TrainingError, match="different frozen base weights"):
        run(tmp_path, "fp", epochs=2, model=other, resume=True)


class NaNAt:
    """compute-loss wrapper making the loss of the n-th micro-batch NaN."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, model, batch):
        self.calls += 1
        loss = model(**batch).loss
        return loss * float("nan") if self.calls == self.n else loss


def test_nan_loss_stops_with_step_batch_and_last_checkpoint(tmp_path, monkeypatch):
    import peftkit.training.loop as loop_module

    monkeypatch.setattr(loop_module, "_default_loss", NaNAt(5))
    model, _ = None, None
    with pytest.raises(TrainingError) as info:
        run(tmp_path, "nan", epochs=1, checkpoint_every=2)
    message = str(info.value)
    assert "optimizer step 5" in message and "batch 4" in message
    kept = tmp_path / "nan" / "checkpoints" / "step-4"
    assert str(kept) in message and kept.is_dir()
    del model


def test_exploding_loss_is_reported_as_a_too_high_learning_rate(tmp_path, monkeypatch):
    import peftkit.training.loop as loop_module

    calls = {"n": 0}

    def exploding(model, batch):
        calls["n"] += 1
        loss = model(**batch).loss
        return loss * 1e5 if calls["n"] >= 3 else loss

    monkeypatch.setattr(loop_module, "_default_loss", exploding)
    with pytest.raises(TrainingError, match=r"exploded at optimizer step 3.*learning rate \(--lr 0.005\)"):
        run(tmp_path, "boom", epochs=1)


def test_accelerator_with_other_accumulation_is_rejected(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path), grad_accum=2)
    accelerator = build_accelerator(TrainConfig(grad_accum=1))
    with pytest.raises(ConfigError, match="grad_accum=2"):
        train(wrapped(), DataLoader(samples(), batch_size=4), config, accelerator=accelerator)


def test_on_optimizer_step_sees_every_step_with_gradients(tmp_path, monkeypatch):
    seen = []

    def record(model, step):
        assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
        seen.append(step)

    monkeypatch.setattr(peftkit, "on_optimizer_step", record)
    _, result = run(tmp_path, "hook", data=samples(n=20), epochs=2, grad_accum=2)
    assert seen == list(range(1, result.global_step + 1))


def test_resume_with_another_lr_and_more_epochs_follows_the_new_schedule(tmp_path):
    """After --resume with other --lr / --epochs the new values apply (they were silently ignored)."""
    run(tmp_path, "short", epochs=1, lr=5e-3, checkpoint_every=3)
    _, resumed = run(tmp_path, "short", epochs=2, lr=1e-3, resume=True)
    _, reference = run(tmp_path, "long", epochs=2, lr=1e-3)

    def rates(result):
        return {r["step"]: r["lr"] for r in result.history if "lr" in r}

    new, expected = rates(resumed), rates(reference)
    assert resumed.global_step == reference.global_step == 12
    assert set(new) == set(range(7, 13))  # the resumed run logged the steps it took
    for step, rate in new.items():
        assert rate == pytest.approx(expected[step], rel=1e-12), f"step {step}"
    assert new[12] > 0, "the extra epoch trains (it ran at lr 0 when the old schedule was kept)"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["recipes/ner_lora.py", "--lr", "1e-3"], {}, "python3 recipes/ner_lora.py --lr 1e-3 --resume"),
        (
            ["recipes/ner_lora.py", "--resume-from", "out/checkpoints/step-10", "--epochs", "2"],
            {"ACCELERATE_MIXED_PRECISION": "no"},
            "accelerate launch recipes/ner_lora.py --epochs 2 --resume",
        ),
        (
            ["recipes/ner_lora.py", "--resume-from=out/checkpoints/step-10", "--resume"],
            {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"},
            "accelerate launch --cpu recipes/ner_lora.py --resume",
        ),
        (
            ["recipes/ner_lora.py"],
            {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "1", "WORLD_SIZE": "2"},
            "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/ner_lora.py --resume",
        ),
    ],
)
def test_the_resume_command_shown_after_a_stop_continues_from_the_newest_checkpoint(
    argv, environ, expected, monkeypatch
):
    monkeypatch.setattr("sys.executable", "/usr/bin/python3")
    assert resume_command(argv, environ) == expected
