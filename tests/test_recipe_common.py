"""Fast in-process tests of the recipes' shared glue (``recipes/common.py``) and their YAML configs."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import peftkit
from peftkit.errors import ConfigError, TrainingError
from peftkit.state import get_state
from peftkit.training import planned_optimizer_steps
from tests.tiny_models import make_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def recipes():
    """Import ``common`` and the recipe modules the way they import each other (script directory on the path)."""
    sys.path.insert(0, str(RECIPES))
    try:
        yield {
            name: importlib.import_module(name)
            for name in ("common", "ner_lora", "sentiment_adapter", "clm_adalora")
        }
    finally:
        sys.path.remove(str(RECIPES))


CASES = [("ner_lora", "NerConfig"), ("sentiment_adapter", "SentimentConfig"), ("clm_adalora", "ClmConfig")]


@pytest.mark.parametrize(("module", "cls"), CASES)
def test_default_yaml_is_read_without_config_and_the_command_line_wins(
    recipes, module: str, cls: str
) -> None:
    config_cls = getattr(recipes[module], cls)
    config = recipes["common"].parse_args(config_cls, ["--lr", "0.25", "--seed", "7"], f"{module}.yaml")
    assert (config.lr, config.seed) == (0.25, 7)
    assert config.output_dir == f"runs/{module}"
    assert (
        config.method
        == {"ner_lora": "lora", "sentiment_adapter": "adapter", "clm_adalora": "adalora"}[module]
    )


def test_explicit_config_file_replaces_the_default_one(recipes, tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 9\n", encoding="utf-8")
    config = recipes["common"].parse_args(
        recipes["ner_lora"].NerConfig, ["--config", str(path)], "ner_lora.yaml"
    )
    assert config.epochs == 9 and config.r is None  # nothing from ner_lora.yaml


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--train-fil", "x"], "--train-file"),
        (["--threads", "0"], "threads=0 must be >= 1"),
        (
            ["--method", "lorra"],
            r"known: adalora, adapter, dora, ia3, lora, parallel, prefix.*or 'full': full fine-tuning.*Did you mean 'lora'",
        ),
        (["--method", "ful"], r"Did you mean 'full'"),
    ],
)
def test_bad_options_are_named_with_the_fix(recipes, argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        recipes["common"].parse_args(recipes["ner_lora"].NerConfig, argv, "ner_lora.yaml")


def test_full_fine_tuning_trains_every_weight_and_names_the_ignored_adapter_options(recipes, caplog) -> None:
    common = recipes["common"]
    config = common.parse_args(recipes["ner_lora"].NerConfig, ["--method", "full"], "ner_lora.yaml")
    model = make_model("bert")
    with caplog.at_level(logging.WARNING):
        params = common.apply_method(model, config, DataLoader(range(4)), _OneProcess())
    assert params["trainable_params"] == params["total_params"] == sum(p.numel() for p in model.parameters())
    assert "r=16" in caplog.text and "target_modules" in caplog.text


def test_adapter_method_drops_rank_options_it_does_not_have(recipes, caplog) -> None:
    config = recipes["common"].parse_args(
        recipes["ner_lora"].NerConfig,
        ["--method", "adapter", "--target-modules", "attention"],
        "ner_lora.yaml",
    )
    with caplog.at_level(logging.WARNING):
        options = config.wrap_options()
    assert "r" not in options and "alpha" not in options and options["dropout"] == 0.0
    assert "r=16" in caplog.text and config.r == 16  # the config itself is left as it was


def test_another_method_does_not_inherit_the_config_files_method_specific_options(recipes, caplog) -> None:
    # ner_lora.yaml targets LoRA at query/key/value/dense: a bottleneck adapter must keep its own
    # placement; sentiment_adapter.yaml's placement is no LoRA option, its head_modules are kept.
    common, ner, sentiment = recipes["common"], recipes["ner_lora"], recipes["sentiment_adapter"]
    adapter = common.parse_args(ner.NerConfig, ["--method", "adapter"], "ner_lora.yaml")
    assert adapter.target_modules is None and "target_modules=" in adapter.file_options_not_used[0]
    model = make_model("bert")
    with caplog.at_level(logging.WARNING):
        common.apply_method(model, adapter, DataLoader(range(4)), _OneProcess())
    assert "not using target_modules=['query', 'key', 'value', 'dense'] (set for method 'lora'" in caplog.text
    default = peftkit.wrap(make_model("bert"), "adapter", dropout=0.0)  # the adapter's own placement
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        p.numel() for p in default.parameters() if p.requires_grad
    )

    lora = common.parse_args(sentiment.SentimentConfig, ["--method", "lora"], "sentiment_adapter.yaml")
    assert lora.method_options == {"head_modules": ["classifier", "bert.pooler"]}
    assert {item.split("=")[0] for item in lora.file_options_not_used} == {"placement", "reduction_factor"}
    same = common.parse_args(ner.NerConfig, ["--method", "lora"], "ner_lora.yaml")
    kept = common.parse_args(
        ner.NerConfig, ["--method", "dora", "--target-modules", "query"], "ner_lora.yaml"
    )
    assert same.target_modules == ["query", "key", "value", "dense"] and kept.target_modules == ["query"]
    assert same.file_options_not_used == kept.file_options_not_used == []


def test_adalora_total_step_is_computed_from_the_training_loader(recipes) -> None:
    config = recipes["common"].parse_args(
        recipes["clm_adalora"].ClmConfig,
        ["--epochs", "3", "--batch-size", "4", "--max-steps", "null"],
        "clm_adalora.yaml",
    )
    config.method_options.update(tinit=1, tfinal=1, delta_t=1)
    config.target_modules = ["c_attn"]
    loader = DataLoader(range(10), batch_size=4)  # 3 batches per epoch
    model = make_model("gpt2")
    recipes["common"].apply_method(model, config, loader, _OneProcess())
    assert get_state(model).adapters["default"].config.total_step == planned_optimizer_steps(3, config) == 9


def test_ordered_restores_data_set_order_and_rejects_missing_or_duplicated_examples(recipes) -> None:
    ordered = recipes["common"].ordered
    outputs = {
        "index": [torch.tensor([2, 0]), torch.tensor([1])],
        "x": [torch.tensor([20, 0]), torch.tensor([10])],
    }
    assert [int(v) for v in ordered(outputs, 3)["x"]] == [0, 10, 20]
    with pytest.raises(TrainingError, match="gathered 3 examples"):
        ordered({"index": [torch.tensor([0, 0, 1])], "x": [torch.zeros(3)]}, 3)
    with pytest.raises(TrainingError, match="has 4"):
        ordered(outputs, 4)


class _OneProcess:
    num_processes = 1


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        (["train"], "--valid-file and --test-file not"),
        (["train", "valid"], "--test-file not"),
        (["test"], "--train-file and --valid-file not"),
    ],
)
def test_a_partial_set_of_data_files_is_refused_naming_the_missing_options(
    recipes, tmp_path: Path, given: list[str], missing: str
) -> None:
    argv = [arg for split in given for arg in (f"--{split}-file", str(tmp_path / f"{split}.txt"))]
    with pytest.raises(ConfigError, match=f"given but {missing}: pass all three files"):
        recipes["common"].parse_args(recipes["ner_lora"].NerConfig, argv, "ner_lora.yaml")


def test_the_users_files_are_read_alone_never_mixed_with_conll(recipes, tmp_path: Path) -> None:
    ner = recipes["ner_lora"]
    files = {}
    for split, word in (("train", "rex"), ("valid", "tom"), ("test", "kim")):
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text(f"{word} B-ANIMAL\nruns O\n\nhello O\n", encoding="utf-8")
    argv = [arg for split, path in files.items() for arg in (f"--{split}-file", str(path))]
    config = recipes["common"].parse_args(ner.NerConfig, argv, "ner_lora.yaml")
    splits = ner.read_splits(config)
    assert {name: [s.words for s in sentences] for name, sentences in splits.items()} == {
        "train": [("rex", "runs"), ("hello",)],
        "valid": [("tom", "runs"), ("hello",)],
        "test": [("kim", "runs"), ("hello",)],
    }


def test_head_bias_prior_starts_the_head_at_the_log_class_frequencies(recipes) -> None:
    model = make_model("bert")  # 5 token labels
    assert recipes["common"].init_head_bias(model, [96, 0, 1, 2, 1]) == "classifier"
    expected = torch.log(torch.tensor([97.0, 1, 2, 3, 2]) / 105)
    torch.testing.assert_close(model.classifier.bias.detach(), expected)
    probabilities = torch.softmax(model.classifier.bias.detach(), -1)
    assert probabilities[0].item() == pytest.approx(97 / 105)
    with pytest.raises(ConfigError, match="needs a linear task head with 3 outputs"):
        recipes["common"].init_head_bias(model, [1, 2, 3])


def test_ner_loss_options_weight_o_and_smooth_the_labels(recipes) -> None:
    ner = recipes["ner_lora"]
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    plain = recipes["common"].parse_args(ner.NerConfig, [], "ner_lora.yaml")
    assert ner.make_compute_loss(plain, labels) is None  # the model's own loss
    config = recipes["common"].parse_args(
        ner.NerConfig, ["--o-weight", "0.25", "--label-smoothing", "0.1"], "ner_lora.yaml"
    )
    model = make_model("bert").eval()
    batch = {"input_ids": torch.tensor([[2, 7, 9, 4]]), "labels": torch.tensor([[-100, 0, 1, 0]])}
    loss = ner.make_compute_loss(config, labels)(model, dict(batch))
    logits = model(input_ids=batch["input_ids"]).logits[0, 1:]
    # Weighted mean over the 3 labelled pieces (O weighs 0.25); the smoothing mass 0.1 is spread over
    # the 5 classes, each term weighted by its class's weight (torch's semantics).
    log_p = torch.log_softmax(logits, -1)
    weights, targets = torch.tensor([0.25, 1.0, 0.25]), torch.tensor([0, 1, 0])
    smoothed = -0.1 * (log_p * torch.tensor([0.25, 1, 1, 1, 1])).sum(-1) / 5
    expected = ((-0.9 * log_p[torch.arange(3), targets]) * weights + smoothed).sum() / weights.sum()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ConfigError, match="o_weight=0.0 must be > 0"):
        recipes["common"].parse_args(ner.NerConfig, ["--o-weight", "0"], "ner_lora.yaml")
