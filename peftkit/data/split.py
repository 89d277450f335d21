"""Deterministic, seeded splits of a dataset into parts (train / valid / test, or by document).

Splits are computed on indices: the same ``(labels, fractions, seed)`` always gives the same split,
on every machine and Python version (:class:`random.Random` with an integer seed is stable).
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence

from peftkit.errors import InvalidOptionError


def _check_fractions(fractions: Sequence[float]) -> None:
    if (
        not fractions
        or any(not (f > 0) for f in fractions)
        or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
    ):
        raise InvalidOptionError(
            f"split fractions must be positive and sum to 1, got {tuple(fractions)}; e.g. (0.8, 0.1, 0.1)."
        )


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items into parts proportional to ``fractions`` (largest-remainder rounding)."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(fractions)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    return counts


def stratified_split(
    labels: Sequence[Hashable], fractions: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int = 0
) -> list[list[int]]:
    """Split indices into parts that keep the label proportions of the whole dataset.

    Args:
        labels: One hashable label per example; use a constant for an unstratified split.
        fractions: Size of each part, summing to 1.
        seed: Seed of the shuffle.

    Returns:
        One sorted list of indices per fraction; together they cover every index exactly once.

    Raises:
        InvalidOptionError: If the fractions are not positive or do not sum to 1.

    Example:
        >>> stratified_split([0, 0, 0, 0, 1, 1], (0.5, 0.5), seed=0)  # doctest: +SKIP
        [[1, 2, 4], [0, 3, 5]]

    """
    _check_fractions(fractions)
    rng = random.Random(seed)
    by_label: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_label, key=repr):
        indices = by_label[label]
        rng.shuffle(indices)
        begin = 0
        for part, count in zip(parts, _allocate(len(indices), fractions), strict=True):
            part.extend(indices[begin : begin + count])
            begin += count
    return [sorted(part) for part in parts]
