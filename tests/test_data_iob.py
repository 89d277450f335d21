from __future__ import annotations

import pytest

from peftkit.data.iob import (
    detect_scheme,
    first_iob2_violation,
    inside_form,
    iob1_to_iob2,
    iobes_to_iob2,
    split_tag,
    to_iob2,
)
from peftkit.errors import InvalidOptionError


@pytest.mark.parametrize(
    ("sentences", "expected"),
    [
        ([["B-PER", "I-PER", "O", "B-LOC"]], "IOB2"),
        ([["I-PER", "I-PER", "O", "I-LOC"]], "IOB1"),
        ([["B-PER", "I-PER"], ["O", "I-LOC"]], "IOB1"),  # one IOB1 chunk start is enough
        ([["B-PER", "I-LOC"]], "IOB1"),  # I- after another type opens a chunk
        ([["O", "O"], ["O"]], "IOB2"),
        ([["S-PER", "O", "B-LOC", "E-LOC"]], "IOBES"),
        ([["U-PER", "O", "B-LOC", "L-LOC"]], "BILOU"),
    ],
)
def test_detect_scheme(sentences: list[list[str]], expected: str) -> None:
    assert detect_scheme(sentences) == expected


@pytest.mark.parametrize(
    ("iob1", "iob2"),
    [
        (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
        (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),  # adjacent entities of one type
        (["I-PER", "I-LOC", "I-LOC"], ["B-PER", "B-LOC", "I-LOC"]),  # type change opens a chunk
        (["O", "O"], ["O", "O"]),
        (["B-ORG", "I-ORG"], ["B-ORG", "I-ORG"]),  # IOB2 input is unchanged
    ],
)
def test_iob1_to_iob2(iob1: list[str], iob2: list[str]) -> None:
    assert iob1_to_iob2(iob1) == iob2
    assert to_iob2(iob1, "IOB1") == iob2
    assert first_iob2_violation(iob2) is None


def test_iobes_and_bilou_to_iob2() -> None:
    assert iobes_to_iob2(["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"]) == [
        "B-PER",
        "B-LOC",
        "I-LOC",
        "I-LOC",
        "O",
    ]
    assert to_iob2(["U-PER", "B-LOC", "L-LOC"], "BILOU") == ["B-PER", "B-LOC", "I-LOC"]


def test_first_iob2_violation_points_at_the_chunk_opening_inside_tag() -> None:
    assert first_iob2_violation(["B-PER", "O", "I-LOC"]) == 2
    assert first_iob2_violation(["I-PER"]) == 0


def test_unknown_scheme_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(InvalidOptionError, match="Did you mean 'IOB1'"):
        to_iob2(["O"], "IOB-1")


@pytest.mark.parametrize("tag", ["X", "B-", "B_PER", "PER", "", "o"])
def test_split_tag_rejects_malformed_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="malformed tag"):
        split_tag(tag)


def test_split_tag_and_inside_form() -> None:
    assert split_tag("O") == ("O", "")
    assert split_tag("B-MISC") == ("B", "MISC")
    assert split_tag("I-A-B") == ("I", "A-B")
    assert [inside_form(t) for t in ("O", "B-PER", "I-PER")] == ["O", "I-PER", "I-PER"]
