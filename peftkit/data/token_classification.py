"""Word-level NER data -> word-piece features for ``AutoModelForTokenClassification``, and back.

Label alignment (with a *fast* tokenizer's ``word_ids()``)::

    words     EU        rejects              German
    pieces    [CLS] eu  rejects  ##s?  ...   german  [SEP]
    labels    -100  B-ORG  O     -100        B-MISC  -100     (first piece of a word gets its label)

Other pieces of a word get ``-100`` (ignored by the loss) or, with ``label_all_pieces=True``, the
``I-`` form of the word's label. Special tokens always get ``-100``.

**Long sentences are never truncated.** A sentence whose pieces do not fit in ``max_length``
(including special tokens) is split into consecutive, non-overlapping *windows* of whole words that
each fit; every window becomes one feature. :class:`Window` records which sentence and which words a
feature holds, and :func:`predictions_to_tags` reassembles per-piece predictions into one tag per
original word, so evaluation always sees every word of every sentence. (Only a single word that is
longer than ``max_length`` pieces by itself is cut; its first piece, which carries the prediction,
is kept.) Words that the tokenizer turns into no piece at all (e.g. a lone zero-width space) are
replaced by the unknown token so that they still get a prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from peftkit.data.conll import Sentence
from peftkit.data.iob import inside_form
from peftkit.errors import DataError, InvalidOptionError, did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Window:
    """Which words of which sentence one feature holds.

    Attributes:
        sentence: Index of the sentence in the list given to :func:`encode_token_classification`.
        start: Index of the window's first word in that sentence.
        end: One past the index of its last word.

    """

    sentence: int
    start: int
    end: int


@dataclass
class TokenClassificationFeatures(Sequence):
    """Encoded features plus what is needed to map predictions back to words.

    Indexing yields the feature dicts, so the object can be handed to a ``DataLoader`` directly.

    Attributes:
        features: One dict per window: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the
            tokenizer makes them) and ``labels``, all lists of ints of the same length.
        windows: The :class:`Window` of each feature.
        word_ids: Per feature, the window-relative word index of every piece (``None`` for specials).
        sentence_lengths: Number of words of each original sentence.

    """

    features: list[dict[str, list[int]]]
    windows: list[Window]
    word_ids: list[list[int | None]]
    sentence_lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, list[int]]:  # type: ignore[override]
        return self.features[index]

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        return iter(self.features)

    @property
    def lengths(self) -> list[int]:
        """Number of pieces of each feature (for :class:`~peftkit.data.collate.LengthGroupedSampler`)."""
        return [len(f["input_ids"]) for f in self.features]


def align_labels(
    word_ids: Sequence[int | None],
    tags: Sequence[str],
    label2id: Mapping[str, int],
    *,
    label_all_pieces: bool = False,
) -> list[int]:
    """Give each word piece a label id.

    Args:
        word_ids: The word index of each piece (``None`` for special tokens), as from
            ``BatchEncoding.word_ids()``.
        tags: One tag per word.
        label2id: Tag -> label id.
        label_all_pieces: Label non-first pieces with the ``I-`` form of the word's tag instead of -100.

    Returns:
        One label id per piece; -100 where the loss should ignore the piece.

    Example:
        >>> align_labels([None, 0, 0, 1, None], ["B-PER", "O"], {"O": 0, "B-PER": 1, "I-PER": 2})
        [-100, 1, -100, 0, -100]

    """
    labels = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(label2id[tags[word]])
        elif label_all_pieces:
            labels.append(label2id[inside_form(tags[word])])
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


def _check_inputs(
    sentences: Sequence[Sentence],
    tokenizer: PreTrainedTokenizerBase,
    label2id: Mapping[str, int],
    max_length: int,
    label_all_pieces: bool,
) -> int:
    """Validate the arguments and return the piece budget per window (excluding special tokens)."""
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidOptionError(
            f"{type(tokenizer).__name__} is a slow tokenizer, but label alignment needs word_ids() from a fast "
            "one; load it with AutoTokenizer.from_pretrained(path, use_fast=True)."
        )
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise InvalidOptionError(
            f"max_length={max_length} leaves no room for words after {max_length - budget} special tokens; "
            "use a larger max_length (128 suits CoNLL-2003)."
        )
    for index, sentence in enumerate(sentences):
        for tag in sentence.tags:
            needed = [tag, inside_form(tag)] if label_all_pieces else [tag]
            for name in needed:
                if name not in label2id:
                    where = f"line {sentence.line}" if sentence.line is not None else "no line number"
                    raise DataError(
                        f"sentence {index} ({where}) has tag {name!r}, which is not in label2id "
                        f"{sorted(label2id)}.{did_you_mean(name, label2id)} Build label2id from "
                        "peftkit.data.label_list(all splits)."
                    )
    return budget


def _tokenize_sentences(
    sentences: Sequence[Sentence], tokenizer: PreTrainedTokenizerBase
) -> tuple[Any, list[list[str]], list[list[int]], set[int]]:
    """Tokenise whole sentences once (with special tokens, no truncation).

    Returns:
        The batch encoding, the word lists (words without any piece replaced by the unknown token),
        the number of pieces of each word, and the indices of sentences where a word was replaced
        (their encoding is stale and must be redone).

    """
    word_lists = [list(s.words) for s in sentences]
    encoded = tokenizer(word_lists, is_split_into_words=True, verbose=False)
    counts_per_sentence = []
    replaced: set[int] = set()
    for index, words in enumerate(word_lists):
        counts = [0] * len(words)
        for word in encoded.word_ids(index):
            if word is not None:
                counts[word] += 1
        for position, count in enumerate(counts):
            if count == 0 and tokenizer.unk_token is not None:
                words[position] = tokenizer.unk_token
                counts[position] = 1
                replaced.add(index)
        counts_per_sentence.append(counts)
    if replaced:
        logger.warning(
            "words in %d sentences produced no word piece and were replaced by %r",
            len(replaced),
            tokenizer.unk_token,
        )
    return encoded, word_lists, counts_per_sentence, replaced


def _windows(sentence: int, counts: Sequence[int], budget: int) -> list[Window]:
    """Split one sentence into consecutive word windows whose pieces fit in ``budget``."""
    windows = []
    start, total = 0, 0
    for position, count in enumerate(counts):
        if total + count > budget and position > start:
            windows.append(Window(sentence, start, position))
            start, total = position, 0
        total += count
    windows.append(Window(sentence, start, len(counts)))
    return windows


def encode_token_classification(
    sentences: Sequence[Sentence],
    tokenizer: PreTrainedTokenizerBase,
    label2id: Mapping[str, int],
    *,
    max_length: int = 128,
    label_all_pieces: bool = False,
) -> TokenClassificationFeatures:
    """Tokenise pre-split sentences and align word tags to word pieces.

    Args:
        sentences: Word-level sentences (e.g. from :func:`~peftkit.data.conll.read_conll`).
        tokenizer: A *fast* tokenizer (``tokenizer.is_fast``). BPE tokenizers such as GPT-2's need
            ``add_prefix_space=True`` for pre-split words.
        label2id: Tag -> label id (e.g. ``{t: i for i, t in enumerate(label_list(train))}``).
        max_length: Maximum pieces per feature, special tokens included. Longer sentences are split
            into several features (see the module docstring); no word is dropped.
        label_all_pieces: Label non-first pieces with the ``I-`` form of the word's tag instead of -100.

    Returns:
        The features and the mapping back to sentences.

    Raises:
        InvalidOptionError: If the tokenizer is slow or ``max_length`` is too small.
        DataError: If a tag is missing from ``label2id``.

    """
    budget = _check_inputs(sentences, tokenizer, label2id, max_length, label_all_pieces)
    if not sentences:
        return TokenClassificationFeatures([], [], [], [])
    whole, word_lists, counts, stale = _tokenize_sentences(sentences, tokenizer)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in whole]
    windows_per_sentence = [_windows(index, c, budget) for index, c in enumerate(counts)]
    # Sentences that fit keep their first encoding; only split or repaired ones are tokenised again.
    redo = [
        w
        for index, ws in enumerate(windows_per_sentence)
        if len(ws) > 1 or index in stale or sum(counts[index]) > budget
        for w in ws
    ]
    oversized = sum(1 for c in counts for n in c if n > budget)
    if oversized:
        logger.warning("%d words have more than %d pieces on their own and were cut", oversized, budget)
    split = sum(len(ws) > 1 for ws in windows_per_sentence)
    if split:
        logger.info("%d sentences longer than %d pieces were split into word windows", split, max_length)
    again = None
    if redo:
        again = tokenizer(
            [word_lists[w.sentence][w.start : w.end] for w in redo],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
        )
    redone = {w: index for index, w in enumerate(redo)}
    columns = {key: whole[key] for key in keys}
    redo_columns = {key: again[key] for key in keys} if again is not None else {}
    features, windows, word_ids = [], [], []
    for index, sentence_windows in enumerate(windows_per_sentence):
        for window in sentence_windows:
            if window in redone:
                row, source, ids = redone[window], redo_columns, again.word_ids(redone[window])  # type: ignore[union-attr]
            else:
                row, source, ids = index, columns, whole.word_ids(index)
            tags = sentences[window.sentence].tags[window.start : window.end]
            feature = {key: list(source[key][row]) for key in keys}
            feature["labels"] = align_labels(ids, tags, label2id, label_all_pieces=label_all_pieces)
            features.append(feature)
            windows.append(window)
            word_ids.append(list(ids))
    return TokenClassificationFeatures(features, windows, word_ids, [len(s) for s in sentences])


def _as_label_ids(row: Any) -> np.ndarray:
    """Turn one feature's predictions (label ids or logits; list, array or tensor) into label ids."""
    if hasattr(row, "detach"):
        row = row.detach().float().cpu().numpy() if row.is_floating_point() else row.detach().cpu().numpy()
    array = np.asarray(row)
    if array.ndim == 2:
        array = array.argmax(-1)
    if array.ndim != 1:
        raise InvalidOptionError(
            f"each feature's predictions must be 1-D label ids or 2-D logits, got shape {array.shape}."
        )
    return array


def predictions_to_tags(
    encoded: TokenClassificationFeatures,
    predictions: Sequence[Any],
    id2label: Mapping[int, str] | Sequence[str],
) -> list[list[str]]:
    """Map per-piece predictions back to one tag per original word (first piece of each word).

    Windows of a split sentence are stitched back together, so the result has exactly one tag per
    word of every sentence given to :func:`encode_token_classification`, ready for
    :func:`peftkit.metrics.ner_scores`.

    Args:
        encoded: The result of :func:`encode_token_classification`.
        predictions: One entry per feature, **in feature order** (evaluate with a sequential sampler;
            ``accelerator.gather_for_metrics`` keeps the order): label ids of shape ``(pieces,)`` or
            logits of shape ``(pieces, num_labels)``; right padding beyond the feature's length is
            ignored. A 2-D (ids) or 3-D (logits) array/tensor over all features also works.
        id2label: Label id -> tag (a mapping or a list indexed by id).

    Returns:
        One list of tags per original sentence.

    Raises:
        InvalidOptionError: If the number or length of predictions does not match the features.

    """
    if len(predictions) != len(encoded):
        raise InvalidOptionError(
            f"got predictions for {len(predictions)} features but there are {len(encoded)}; pass one "
            "entry per feature, in feature order."
        )
    tags: list[list[str | None]] = [[None] * n for n in encoded.sentence_lengths]
    for index, (window, ids) in enumerate(zip(encoded.windows, encoded.word_ids, strict=True)):
        row = _as_label_ids(predictions[index])
        if len(row) < len(ids):
            raise InvalidOptionError(
                f"predictions for feature {index} cover {len(row)} pieces but the feature has {len(ids)}; "
                "do not truncate predictions (right padding is fine)."
            )
        previous = None
        for position, word in enumerate(ids):
            if word is not None and word != previous:
                tags[window.sentence][window.start + word] = id2label[int(row[position])]
            previous = word
    missing = sum(tag is None for sentence in tags for tag in sentence)
    if missing:
        logger.warning("%d words had no word piece; predicted 'O' for them", missing)
    return [[tag if tag is not None else "O" for tag in sentence] for sentence in tags]
