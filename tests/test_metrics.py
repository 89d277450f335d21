from __future__ import annotations

import math
import warnings

import pytest
import torch

from peftkit.errors import InvalidOptionError
from peftkit.metrics import classification_scores, ner_scores, perplexity


def test_perfect_ner_predictions() -> None:
    tags = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    scores = ner_scores(tags, tags)
    assert (scores["precision"], scores["recall"], scores["f1"], scores["token_accuracy"]) == (
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert scores["support"] == 3 and scores["num_sentences"] == 2 and scores["num_tokens"] == 6


def test_wrong_boundary_is_both_a_false_positive_and_a_false_negative() -> None:
    true = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER cut short: 1 FP (PER[0:1]) + 1 FN (PER[0:2]); LOC correct
    scores = ner_scores(true, pred)
    torch.testing.assert_close(
        [scores["precision"], scores["recall"], scores["f1"], scores["token_accuracy"]], [0.5, 0.5, 0.5, 0.75]
    )
    assert scores["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}


def test_wrong_type_missed_and_spurious_entities() -> None:
    true = [["B-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG"]]
    pred = [["B-ORG", "O", "B-LOC", "B-MISC"], ["O", "O"]]
    # TP: LOC. FP: ORG (wrong type), MISC (spurious). FN: PER, ORG[0:2]. -> P = 1/3, R = 1/3
    scores = ner_scores(true, pred)
    torch.testing.assert_close([scores["precision"], scores["recall"], scores["f1"]], [1 / 3, 1 / 3, 1 / 3])
    assert scores["token_accuracy"] == pytest.approx(2 / 6)  # only the O and the LOC token match
    assert scores["per_type"]["MISC"]["support"] == 0
    assert scores["per_type"]["ORG"]["precision"] == 0.0


def test_default_mode_accepts_entity_starting_with_inside_tag_strict_does_not() -> None:
    true = [["B-PER", "I-PER", "O"]]
    pred = [["I-PER", "I-PER", "O"]]
    assert ner_scores(true, pred)["f1"] == 1.0
    assert ner_scores(true, pred, mode="strict", scheme="IOB2")["f1"] == 0.0


def test_no_predicted_entities_gives_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = ner_scores([["B-PER", "O"]], [["O", "O"]])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("true", "pred", "kwargs", "message"),
    [
        ([["O"]], [["O"], ["O"]], {}, "1 true and 2 predicted"),
        ([["O", "O"]], [["O"]], {}, "sentence 0 has 2 true tags but 1"),
        ([], [], {}, "no sentences"),
        ([["O"]], [["O"]], {"mode": "lenient"}, "mode"),
        ([["O"]], [["O"]], {"mode": "strict", "scheme": "IOB3"}, "unknown scheme"),
    ],
)
def test_ner_scores_input_errors(true, pred, kwargs, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        ner_scores(true, pred, **kwargs)


def test_classification_scores_by_hand() -> None:
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    preds = [1, 1, 0, 0, 0, 1, 0, 1]
    # positive: TP 3, FP 1, FN 1 -> F1 = 6/8; negative: TP 3, FP 1, FN 1 -> F1 = 6/8
    scores = classification_scores(torch.tensor(labels), preds)
    torch.testing.assert_close(
        [scores["accuracy"], scores["macro_f1"], scores["binary_f1"]], [6 / 8, 0.75, 0.75]
    )
    assert scores["num_examples"] == 8


def test_classification_scores_unbalanced_and_multiclass() -> None:
    scores = classification_scores([0, 0, 0, 1], [0, 0, 0, 0])
    assert scores["accuracy"] == 0.75 and scores["binary_f1"] == 0.0
    assert scores["macro_f1"] == pytest.approx((6 / 7 + 0.0) / 2)
    multi = classification_scores([0, 1, 2, 2], [0, 2, 2, 2], positive_label=2)
    assert multi["macro_f1"] == pytest.approx((1.0 + 0.0 + 0.8) / 3)
    assert multi["binary_f1"] == pytest.approx(0.8)


def test_classification_scores_errors() -> None:
    with pytest.raises(InvalidOptionError, match="3 labels but 2"):
        classification_scores([0, 1, 1], [0, 1])
    with pytest.raises(InvalidOptionError, match="no examples"):
        classification_scores([], [])
    with pytest.raises(InvalidOptionError, match="1-D"):
        classification_scores([[0, 1]], [[0, 1]])


def test_perplexity() -> None:
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(torch.tensor(10 * math.log(4.0)), 10) == pytest.approx(4.0)
    assert perplexity(1e6, 1) == math.inf
    assert math.isnan(perplexity(float("nan"), 3))
    with pytest.raises(InvalidOptionError, match="total_tokens"):
        perplexity(1.0, 0)
    with pytest.raises(InvalidOptionError, match="total_nll"):
        perplexity(-1.0, 3)
