"""Evaluation helpers: whole-set metrics from gathered per-batch outputs, no side effects."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import peftkit
from peftkit.config import TrainConfig
from peftkit.training import build_accelerator, concat_padded, evaluate, reset_accelerate_state, train
from tests.tiny_models import make_batch, make_model


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def pad_collate(items):
    """Pad variable-length samples to the batch's longest (labels with -100)."""
    width = max(len(x["input_ids"]) for x in items)
    out = {"idx": torch.tensor([x["idx"] for x in items])}
    for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100)):
        out[key] = torch.stack(
            [torch.nn.functional.pad(x[key], (0, width - len(x[key])), value=fill) for x in items]
        )
    return out


def ragged_samples(n: int = 7) -> list[dict]:
    batch = make_batch("bert", batch=n, seq=10, seed=2)
    lengths = [3 + (i * 5) % 8 for i in range(n)]
    return [
        {"idx": i, **{k: v[i, : lengths[i]] for k, v in batch.items()}}
        for i in range(n)  # ragged: 3..10 tokens
    ]


def ner_step(model, batch):
    logits = model(**{k: v for k, v in batch.items() if k != "idx"}).logits
    return {"idx": batch["idx"], "predictions": logits.argmax(-1), "labels": batch["labels"]}


def test_every_sample_once_and_sequence_outputs_padded():
    acc = build_accelerator(TrainConfig())
    torch.manual_seed(0)
    model = acc.prepare(peftkit.wrap(make_model("bert"), "lora"))
    data = ragged_samples()
    loader = acc.prepare(DataLoader(data, batch_size=2, collate_fn=pad_collate))
    seen = {}

    def metrics(outputs):
        seen.update(outputs)
        labels = concat_padded(outputs["labels"])
        predictions = concat_padded(outputs["predictions"])
        mask = labels != -100
        return {
            "accuracy": (predictions[mask] == labels[mask]).float().mean().item(),
            "tokens": int(mask.sum()),
        }

    result = evaluate(model, loader, acc, ner_step, metrics)
    assert torch.cat(seen["idx"]).tolist() == list(range(7))
    assert result["tokens"] == sum(len(x["input_ids"]) for x in data)
    assert 0.0 <= result["accuracy"] <= 1.0


def test_evaluation_leaves_rng_and_training_mode_alone():
    acc = build_accelerator(TrainConfig())
    torch.manual_seed(0)
    model = acc.prepare(peftkit.wrap(make_model("bert").train(), "lora"))
    loader = acc.prepare(DataLoader(ragged_samples(), batch_size=3, collate_fn=pad_collate))
    before = torch.get_rng_state()
    evaluate(model, loader, acc, ner_step, lambda outputs: {})
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training


def test_train_evaluates_each_epoch_with_the_default_loss(tmp_path):
    batch = make_batch("bert", batch=8, seq=6, seed=1)
    data = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    config = TrainConfig(output_dir=str(tmp_path), epochs=2, batch_size=4, log_every=1)
    torch.manual_seed(0)
    result = train(
        peftkit.wrap(make_model("bert").train(), "lora"),
        DataLoader(data, batch_size=4, shuffle=True),
        config,
        accelerator=build_accelerator(config),
        eval_dataloader=DataLoader(data, batch_size=3),
    )
    evals = [r for r in result.history if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert result.eval_metrics == evals[-1]["eval"] and result.eval_metrics["eval_loss"] > 0


def test_concat_padded_pads_the_second_dimension():
    joined = concat_padded([torch.ones(2, 3, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)])
    assert joined.shape == (3, 5) and joined[0, 3:].tolist() == [-100, -100]
    assert concat_padded([torch.tensor([1.0]), torch.tensor([2.0, 3.0])]).tolist() == [1.0, 2.0, 3.0]
