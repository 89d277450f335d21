"""Evaluation metrics for the recipes: entity-level NER scores, classification scores, perplexity.

NER is scored per *entity* with seqeval (an entity counts as correct only if its type and both
boundaries match), which is the number papers report (BERT-base CoNLL-2003 test F1 92.4). Token
accuracy is also returned, under a name that cannot be mistaken for F1: it is dominated by ``O``
tokens and is always much higher.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from peftkit.errors import InvalidOptionError, did_you_mean

logger = logging.getLogger(__name__)

_SEQEVAL_SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")


def _check_tag_sequences(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> None:
    if len(true_tags) != len(pred_tags):
        raise InvalidOptionError(
            f"got {len(true_tags)} true and {len(pred_tags)} predicted sentences; give one prediction per sentence."
        )
    if not true_tags:
        raise InvalidOptionError("no sentences to score; pass at least one sentence.")
    for index, (true, pred) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(true) != len(pred):
            raise InvalidOptionError(
                f"sentence {index} has {len(true)} true tags but {len(pred)} predicted; predict one tag per word "
                "(peftkit.data.predictions_to_tags reassembles split sentences)."
            )


def ner_scores(
    true_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    *,
    mode: str | None = None,
    scheme: str = "IOB2",
) -> dict[str, Any]:
    """Entity-level micro precision / recall / F1 (seqeval), per-type scores and token accuracy.

    Args:
        true_tags: Gold tags, one list per sentence.
        pred_tags: Predicted tags, same shape.
        mode: ``None`` (default): seqeval's conlleval-compatible evaluation, which also accepts an
            entity that starts with ``I-``; ``"strict"``: only entities valid under ``scheme`` count.
        scheme: Tagging scheme used in strict mode (``"IOB2"`` by default).

    Returns:
        ``{"precision", "recall", "f1", "support", "token_accuracy", "num_sentences", "num_tokens",
        "per_type": {type: {"precision", "recall", "f1", "support"}}}``; all scores in [0, 1],
        ``support`` counts gold entities. A predicted entity with a wrong boundary is both a false
        positive and a false negative.

    Raises:
        InvalidOptionError: If the shapes differ, there are no sentences, or mode/scheme is unknown.

    Example:
        >>> s = ner_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
        >>> s["f1"], round(s["token_accuracy"], 3)
        (0.0, 0.667)

    """
    from seqeval import scheme as seqeval_scheme
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    _check_tag_sequences(true_tags, pred_tags)
    if mode not in (None, "strict"):
        raise InvalidOptionError(f"mode must be None or 'strict', got {mode!r}.")
    if scheme not in _SEQEVAL_SCHEMES:
        raise InvalidOptionError(
            f"unknown scheme {scheme!r}; use one of {_SEQEVAL_SCHEMES}.{did_you_mean(scheme, _SEQEVAL_SCHEMES)}"
        )
    true = [list(t) for t in true_tags]
    pred = [list(p) for p in pred_tags]
    options: dict[str, Any] = {"mode": mode, "zero_division": 0}
    if mode == "strict":
        options["scheme"] = getattr(seqeval_scheme, scheme)
    report = classification_report(true, pred, output_dict=True, **options)
    per_type = {
        name: {
            "precision": float(values["precision"]),
            "recall": float(values["recall"]),
            "f1": float(values["f1-score"]),
            "support": int(values["support"]),
        }
        for name, values in report.items()
        if not name.endswith(" avg")
    }
    num_tokens = sum(len(t) for t in true)
    correct = sum(a == b for t, p in zip(true, pred, strict=True) for a, b in zip(t, p, strict=True))
    return {
        "precision": float(precision_score(true, pred, **options)),
        "recall": float(recall_score(true, pred, **options)),
        "f1": float(f1_score(true, pred, **options)),
        "support": sum(v["support"] for v in per_type.values()),
        "token_accuracy": correct / num_tokens if num_tokens else 0.0,
        "num_sentences": len(true),
        "num_tokens": num_tokens,
        "per_type": per_type,
    }


def _as_int_list(values: Any, name: str) -> list[int]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise InvalidOptionError(f"{name} must be 1-D (one class id per example), got shape {array.shape}.")
    return [int(v) for v in array.tolist()]


def classification_scores(labels: Any, preds: Any, *, positive_label: int = 1) -> dict[str, float]:
    """Accuracy, macro F1 and the F1 of the positive class.

    Args:
        labels: Gold class ids (list, array or tensor, 1-D).
        preds: Predicted class ids, same length.
        positive_label: Class whose one-vs-rest F1 is reported as ``binary_f1``.

    Returns:
        ``{"accuracy", "macro_f1", "binary_f1", "num_examples"}``. ``macro_f1`` averages the per-class
        F1 over every class that occurs in ``labels`` or ``preds``; a class with no true and no
        predicted example cannot occur, and F1 is 0 when a class is never predicted correctly.

    Raises:
        InvalidOptionError: If the lengths differ or there are no examples.

    Example:
        >>> classification_scores([1, 1, 0, 0], [1, 0, 0, 0])["binary_f1"]
        0.6666666666666666

    """
    gold = _as_int_list(labels, "labels")
    pred = _as_int_list(preds, "preds")
    if len(gold) != len(pred):
        raise InvalidOptionError(f"got {len(gold)} labels but {len(pred)} predictions; give one per example.")
    if not gold:
        raise InvalidOptionError("no examples to score; pass at least one.")

    def f1(cls: int) -> float:
        tp = sum(g == cls and p == cls for g, p in zip(gold, pred, strict=True))
        fp = sum(g != cls and p == cls for g, p in zip(gold, pred, strict=True))
        fn = sum(g == cls and p != cls for g, p in zip(gold, pred, strict=True))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    classes = sorted(set(gold) | set(pred))
    return {
        "accuracy": sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold),
        "macro_f1": sum(f1(c) for c in classes) / len(classes),
        "binary_f1": f1(positive_label),
        "num_examples": len(gold),
    }


def perplexity(total_nll: float, total_tokens: int) -> float:
    """Perplexity ``exp(total_nll / total_tokens)`` from summed token negative log-likelihoods.

    Sum ``loss * predicted_tokens`` over batches (not the mean of batch means, which over-weights
    short batches) and pass the sums here.

    Args:
        total_nll: Sum of per-token NLL in nats (a float or 0-d tensor).
        total_tokens: Number of predicted tokens (see :func:`peftkit.data.text.predicted_tokens`).

    Returns:
        The perplexity; ``inf`` if it overflows, ``nan`` if ``total_nll`` is ``nan``.

    Raises:
        InvalidOptionError: If ``total_tokens`` is not positive or ``total_nll`` is negative.

    Example:
        >>> perplexity(0.0, 10)
        1.0

    """
    nll = float(total_nll)
    tokens = int(total_tokens)
    if tokens <= 0:
        raise InvalidOptionError(
            f"total_tokens must be positive, got {total_tokens!r}; was the held-out set empty?"
        )
    if nll < 0:
        raise InvalidOptionError(f"total_nll must be >= 0 (a sum of negative log-likelihoods), got {nll!r}.")
    if math.isnan(nll):
        logger.warning("perplexity of a nan loss is nan")
        return math.nan
    mean = nll / tokens
    return math.exp(mean) if mean < 709.0 else math.inf
