from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from peftkit.data import (
    Sentence,
    Window,
    align_labels,
    encode_token_classification,
    label_list,
    predictions_to_tags,
)
from peftkit.errors import DataError, InvalidOptionError
from tests.test_data_tokenizers import minilm_tokenizer, tiny_wordpiece_tokenizer

LABELS = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
L2I = {tag: i for i, tag in enumerate(LABELS)}
IGNORE = -100

SENTENCES = [
    Sentence(("EU", "rejects", "Xylophonic", "call"), ("B-ORG", "O", "B-MISC", "O")),
    Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_wordpiece_tokenizer()


def gold_predictions(encoded) -> list[list[int]]:
    """Per-piece 'predictions' that put the gold label on every first piece (and 0 elsewhere)."""
    return [[label if label != IGNORE else 0 for label in f["labels"]] for f in encoded.features]


def test_first_piece_gets_the_label_other_pieces_and_specials_get_ignore(tokenizer) -> None:
    encoded = encode_token_classification(SENTENCES[:1], tokenizer, L2I)
    feature = encoded[0]
    # [CLS] eu rejects x ##y ##l ##o ##p ##h ##o ##n ##i ##c call [SEP]
    assert encoded.word_ids[0] == [None, 0, 1] + [2] * 10 + [3, None]
    assert feature["labels"] == [IGNORE, L2I["B-ORG"], L2I["O"], L2I["B-MISC"]] + [IGNORE] * 9 + [
        L2I["O"],
        IGNORE,
    ]
    assert len(feature["input_ids"]) == len(feature["attention_mask"]) == len(feature["labels"]) == 15
    assert sum(label != IGNORE for label in feature["labels"]) == len(SENTENCES[0])


def test_label_all_pieces_uses_the_inside_form(tokenizer) -> None:
    encoded = encode_token_classification(SENTENCES[:1], tokenizer, L2I, label_all_pieces=True)
    labels = encoded[0]["labels"]
    assert labels[3] == L2I["B-MISC"]
    assert labels[4:13] == [L2I["I-MISC"]] * 9
    assert labels[0] == labels[-1] == IGNORE


def test_align_labels_directly() -> None:
    word_ids = [None, 0, 0, 0, 1, 2, 2, None]
    tags = ["B-PER", "O", "I-PER"]
    assert align_labels(word_ids, tags, L2I) == [IGNORE, 4, IGNORE, IGNORE, 0, 8, IGNORE, IGNORE]
    assert align_labels(word_ids, tags, L2I, label_all_pieces=True) == [IGNORE, 4, 8, 8, 0, 8, 8, IGNORE]


@pytest.mark.parametrize("max_length", [5, 8, 12, 64])
def test_long_sentences_are_split_into_windows_that_reassemble(tokenizer, max_length: int) -> None:
    words = tuple(f"w{i}x" if i % 3 else "the" for i in range(23))  # 'wNx' -> 3-4 pieces, 'the' -> 1
    tags = tuple(["B-PER", "I-PER", "O", "B-LOC"][i % 4] for i in range(23))
    sentences = [*SENTENCES, Sentence(words, tags)]
    encoded = encode_token_classification(sentences, tokenizer, L2I, max_length=max_length)
    assert max(encoded.lengths) <= max_length
    # Windows of one sentence are contiguous, in order, and cover every word exactly once.
    for index, sentence in enumerate(sentences):
        spans = [(w.start, w.end) for w in encoded.windows if w.sentence == index]
        assert spans[0][0] == 0 and spans[-1][1] == len(sentence)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    if max_length < 64:
        assert len([w for w in encoded.windows if w.sentence == 2]) > 1
    tags_back = predictions_to_tags(encoded, gold_predictions(encoded), LABELS)
    assert tags_back == [list(s.tags) for s in sentences]
    assert [len(t) for t in tags_back] == [len(s) for s in sentences]


def test_a_word_longer_than_max_length_is_cut_but_still_predicted(tokenizer, caplog) -> None:
    sentence = Sentence(("the", "abcdefghijklmnop", "eu"), ("O", "B-ORG", "B-LOC"))
    with caplog.at_level(logging.WARNING):
        encoded = encode_token_classification([sentence], tokenizer, L2I, max_length=6)
    assert "were cut" in caplog.text
    assert encoded.windows == [Window(0, 0, 1), Window(0, 1, 2), Window(0, 2, 3)]
    assert max(encoded.lengths) == 6
    assert predictions_to_tags(encoded, gold_predictions(encoded), LABELS) == [list(sentence.tags)]


def test_words_without_pieces_are_replaced_by_unk(tokenizer) -> None:
    sentence = Sentence(("the", "\u200b", "eu"), ("O", "B-PER", "B-ORG"))
    encoded = encode_token_classification([sentence], tokenizer, L2I)
    assert tokenizer.unk_token_id in encoded[0]["input_ids"]
    assert encoded[0]["labels"] == [IGNORE, 0, L2I["B-PER"], L2I["B-ORG"], IGNORE]
    assert predictions_to_tags(encoded, gold_predictions(encoded), LABELS) == [list(sentence.tags)]


def test_predictions_can_be_logits_tensors_and_right_padded(tokenizer) -> None:
    encoded = encode_token_classification(SENTENCES, tokenizer, L2I)
    longest = max(encoded.lengths)
    ids = torch.zeros(len(encoded), longest + 3, dtype=torch.long)
    for row, labels in enumerate(gold_predictions(encoded)):
        ids[row, : len(labels)] = torch.tensor(labels)
    logits = torch.nn.functional.one_hot(ids, len(LABELS)).float()
    expected = [list(s.tags) for s in SENTENCES]
    assert predictions_to_tags(encoded, logits, LABELS) == expected
    assert predictions_to_tags(encoded, ids.numpy(), dict(enumerate(LABELS))) == expected
    assert (
        predictions_to_tags(encoded, [np.asarray(p) for p in gold_predictions(encoded)], LABELS) == expected
    )


def test_prediction_shape_errors(tokenizer) -> None:
    encoded = encode_token_classification(SENTENCES, tokenizer, L2I)
    with pytest.raises(InvalidOptionError, match="predictions for 1 features but there are 2"):
        predictions_to_tags(encoded, gold_predictions(encoded)[:1], LABELS)
    truncated = [p[:3] for p in gold_predictions(encoded)]
    with pytest.raises(InvalidOptionError, match="do not truncate"):
        predictions_to_tags(encoded, truncated, LABELS)


def test_tag_missing_from_label2id_names_sentence_and_line(tokenizer) -> None:
    sentences = [SENTENCES[0], Sentence(("x",), ("B-EVENT",), line=42)]
    with pytest.raises(DataError, match=r"sentence 1 \(line 42\) has tag 'B-EVENT'"):
        encode_token_classification(sentences, tokenizer, L2I)
    with pytest.raises(DataError, match="'I-PER'"):
        encode_token_classification(
            [Sentence(("x",), ("B-PER",))], tokenizer, {"O": 0, "B-PER": 1}, label_all_pieces=True
        )


def test_slow_tokenizer_and_tiny_max_length_are_rejected(tokenizer) -> None:
    class Slow:
        is_fast = False

    with pytest.raises(InvalidOptionError, match="use_fast=True"):
        encode_token_classification(SENTENCES, Slow(), L2I)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="leaves no room"):
        encode_token_classification(SENTENCES, tokenizer, L2I, max_length=2)


def test_features_work_with_padding_collator_and_dataloader(tokenizer) -> None:
    from torch.utils.data import DataLoader

    from peftkit.data import PaddingCollator

    encoded = encode_token_classification(SENTENCES, tokenizer, L2I)
    batch = next(
        iter(DataLoader(encoded, batch_size=2, collate_fn=PaddingCollator.from_tokenizer(tokenizer)))
    )
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 15)
    assert batch["labels"][1, 4:].eq(IGNORE).all()


def test_minilm_alignment_on_conll_like_sentence() -> None:
    tokenizer = minilm_tokenizer()
    sentence = Sentence(
        ("Antidisestablishmentarianism", "hit", "Schwarzenegger", "in", "1996-08-22", "."),
        ("O", "O", "B-PER", "O", "O", "O"),
    )
    encoded = encode_token_classification([sentence], tokenizer, L2I, max_length=128)
    word_ids, labels = encoded.word_ids[0], encoded[0]["labels"]
    assert len(word_ids) > len(sentence) + 2  # several words are split into many pieces
    first_pieces = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    assert [labels[i] for i in first_pieces] == [L2I[t] for t in sentence.tags]
    assert all(labels[i] == IGNORE for i in range(len(labels)) if i not in first_pieces)
    encoded = encode_token_classification([sentence], tokenizer, L2I, max_length=8)
    assert max(encoded.lengths) <= 8
    assert predictions_to_tags(encoded, gold_predictions(encoded), LABELS) == [list(sentence.tags)]
    assert label_list([sentence]) == ["O", "B-PER", "I-PER"]
