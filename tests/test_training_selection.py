"""The loop's ``select_best`` (keep the best evaluation's weights) and its single-class warning."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from peftkit.config import TrainConfig
from peftkit.errors import ConfigError, TrainingError
from peftkit.training import build_accelerator, reset_accelerate_state, train
from peftkit.training.selection import PREDICTED_CLASSES
from tests.test_training_loop import InterruptAt, samples, trainable, wrapped


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


def eval_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per sample: predicted class of every labelled token (-1 elsewhere) and the summed logits."""
    labels = batch.pop("labels")
    logits = model(**batch).logits
    predictions = torch.where(labels != -100, logits.argmax(-1), torch.full_like(labels, -1))
    return {"predictions": predictions, "logit_sum": logits.double().sum((1, 2))}


def classes_and_score(outputs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Distinct predicted classes, and a score that is a pseudo-random function of the weights."""
    predictions = torch.cat([p.flatten() for p in outputs["predictions"]])
    total = torch.cat(outputs["logit_sum"]).sum().item()
    return {PREDICTED_CLASSES: predictions[predictions >= 0].unique().numel(), "score": math.sin(1e3 * total)}


def run(tmp_path, name, *, data, model=None, collate_fn=None, compute_metrics=classes_and_score, **overrides):
    reset_accelerate_state()
    settings = {"epochs": 2, "batch_size": 4, "lr": 5e-3, "log_every": 1, "seed": 7, **overrides}
    config = TrainConfig(output_dir=str(tmp_path / name), **settings)
    model = model if model is not None else wrapped()
    loader = DataLoader(data, batch_size=4, shuffle=True, collate_fn=collate_fn)
    evaluation = DataLoader(data, batch_size=4)
    result = train(
        model, loader, config, accelerator=build_accelerator(config), eval_dataloader=evaluation,
        eval_step=eval_step, compute_metrics=compute_metrics,
    )  # fmt: skip
    return model, result


def evaluations(result) -> dict[int, dict[str, float]]:
    return {r["step"]: r["eval"] for r in result.history if "eval" in r}


def test_an_evaluation_predicting_one_class_is_warned_about_and_recorded(tmp_path, caplog):
    data = samples(n=16)
    for sample in data:  # every token of the training set has class 0: the model learns to say 0
        sample["labels"] = torch.zeros_like(sample["labels"])
    with caplog.at_level(logging.WARNING):
        _, result = run(tmp_path, "one", data=data, epochs=3, lr=5e-3, eval_every=1)
    classes = {step: metrics[PREDICTED_CLASSES] for step, metrics in evaluations(result).items()}
    single = [step for step, count in classes.items() if count == 1]
    assert single and len(single) < len(classes)  # random at first, then only class 0
    assert [w["step"] for w in result.warnings] == single
    assert {w["kind"] for w in result.warnings} == {"single_class"}
    assert result.warnings[0]["epoch"] == pytest.approx(single[0] / 4)  # 4 steps per epoch
    lines = [r.getMessage() for r in caplog.records if "predicts a single class" in r.getMessage()]
    assert len(lines) == len(single) and f"step {single[0]} " in lines[0]


def test_no_warning_while_several_classes_are_predicted(tmp_path):
    _, result = run(tmp_path, "several", data=samples(n=16), epochs=1)
    assert evaluations(result)[4][PREDICTED_CLASSES] > 1 and result.warnings == []


def test_select_best_ends_with_the_weights_of_the_best_evaluation(tmp_path):
    model, result = run(
        tmp_path, "best", data=samples(n=16), epochs=3, eval_every=2, select_best="score",
        checkpoint_every=1, keep_checkpoints=100,
    )  # fmt: skip
    scores = {step: metrics["score"] for step, metrics in evaluations(result).items()}
    assert sorted(scores) == [2, 4, 6, 8, 10, 12]
    best_step = max(scores, key=lambda s: scores[s])
    assert best_step != 12, "choose another seed: the best evaluation should not be the last one"
    assert result.best == {
        "metric": "score", "value": scores[best_step], "step": best_step, "epoch": best_step / 4,
        "last_step": 12, "last_value": scores[12],
    }  # fmt: skip
    assert result.eval_metrics["score"] == scores[best_step]
    # The model holds the best step's weights; the final checkpoint keeps the last ones (to resume).
    root = tmp_path / "best" / "checkpoints"
    for step, same in ((best_step, True), (12, False)):
        saved = load_file(str(root / f"step-{step}" / "model.safetensors"))
        current = trainable(model)
        equal = all(torch.equal(current[name], saved[name]) for name in current)
        assert equal is same, step


def test_select_best_survives_a_resume(tmp_path, python_sigint):
    data = samples(n=16)
    settings = {"epochs": 3, "eval_every": 2, "select_best": "score", "checkpoint_every": 100}
    full, r_full = run(tmp_path, "full", data=data, model=wrapped(), **settings)
    _, r_stop = run(tmp_path, "resumed", data=data, model=wrapped(), collate_fn=InterruptAt(10), **settings)
    assert r_stop.interrupted and r_full.best["step"] < r_stop.global_step < 12  # best before the stop
    resumed, r_res = run(tmp_path, "resumed", data=data, model=wrapped(), resume=True, **settings)
    assert r_res.best == r_full.best
    expected = trainable(full)
    for name, value in trainable(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


def test_select_best_needs_an_evaluation_set_and_a_known_metric(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path / "x"), select_best="f1", epochs=1)
    loader = DataLoader(samples(n=8), batch_size=4)
    with pytest.raises(ConfigError, match="select_best='f1' needs an evaluation set"):
        train(wrapped(), loader, config, accelerator=build_accelerator(config))
    with pytest.raises(
        TrainingError, match=r"select_best='f1' is not among the evaluation metrics \(predicted"
    ):
        run(tmp_path, "unknown", data=samples(n=8), select_best="f1")
