from __future__ import annotations

import pytest

from peftkit.data import stratified_split
from peftkit.errors import InvalidOptionError

LABELS = ["a"] * 50 + ["b"] * 30 + ["c"] * 7


def test_parts_cover_every_index_once_and_keep_class_proportions() -> None:
    parts = stratified_split(LABELS, (0.8, 0.1, 0.1), seed=0)
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(LABELS)))
    counts = [{c: sum(LABELS[i] == c for i in part) for c in "abc"} for part in parts]
    # largest-remainder rounding: c has 7 items -> 5.6, 0.7, 0.7 -> 5, 1, 1
    assert counts == [{"a": 40, "b": 24, "c": 5}, {"a": 5, "b": 3, "c": 1}, {"a": 5, "b": 3, "c": 1}]
    assert all(part == sorted(part) for part in parts)


def test_same_seed_same_split_other_seed_other_split() -> None:
    assert stratified_split(LABELS, (0.5, 0.5), seed=1) == stratified_split(LABELS, (0.5, 0.5), seed=1)
    assert stratified_split(LABELS, (0.5, 0.5), seed=1) != stratified_split(LABELS, (0.5, 0.5), seed=2)


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (1.0, 0.0), (), (-0.1, 1.1)])
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(InvalidOptionError, match="sum to 1"):
        stratified_split(LABELS, fractions)
