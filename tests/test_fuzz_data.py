"""Property tests of the CoNLL reader: it returns sentences or raises DataError at a line, nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftkit.data import CONLL2003_LABELS, Sentence, read_conll
from peftkit.data.iob import first_iob2_violation, split_tag
from peftkit.errors import DataError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-ORG", "S-ORG", "E-ORG", "U-X", "L-X"]
BAD_TAGS = ["X", "B-", "I_PER", "o", "-DOCSTART-", "B-LCO", "PER"]
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
SEPARATOR = st.sampled_from([" ", "\t", "  ", " \t ", "\t\t"])


@st.composite
def token_line(draw: st.DrawFn) -> str:
    separator = draw(SEPARATOR)
    token = draw(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8))
    middle = draw(st.lists(st.sampled_from(["NNP", "B-NP", "I-VP", "-X-", ""]), max_size=3))
    tag = draw(st.sampled_from(TAGS + BAD_TAGS))
    return separator.join([token, *middle, tag]) if draw(st.booleans()) else draw(ANY_TEXT)


LINE = st.one_of(
    st.just(""),
    st.sampled_from([" ", "\t", "\r", " \t "]),
    st.sampled_from(["-DOCSTART- -X- -X- O", "-DOCSTART-", "-DOCSTART-\tO", " -DOCSTART- -X- O O"]),
    token_line(),
    st.sampled_from(["EU NNP B-NP B-ORG", "rejects VBZ B-VP O", "Peter\tNNP\tB-NP\tI-PER", "EU B-ORG"]),
)


@st.composite
def corpus_bytes(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(LINE, max_size=30))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n", "\n\n"]))
    raw = bytearray(text.encode("utf-8"))
    for position, junk in draw(
        st.lists(st.tuples(st.integers(0, len(raw)), st.binary(min_size=1, max_size=3)), max_size=2)
    ):
        raw[position:position] = junk
    return bytes(raw)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "corpus.txt"


@FUZZ
@given(raw=corpus_bytes(), labels=st.sampled_from([None, CONLL2003_LABELS]))
def test_reader_returns_sentences_or_raises_located_data_error(scratch: Path, raw: bytes, labels) -> None:
    scratch.write_bytes(raw)
    try:
        sentences = read_conll(scratch, labels=labels)
    except DataError as error:
        match = re.match(rf"{re.escape(str(scratch))}:(\d+): \S", str(error))
        assert match, str(error)
        assert 1 <= int(match.group(1)) <= raw.count(b"\n") + 1
        return
    assert sentences
    for sentence in sentences:
        assert isinstance(sentence, Sentence) and len(sentence) >= 1
        assert all(split_tag(tag) and tag[:1] in "BIO" for tag in sentence.tags)
        assert first_iob2_violation(sentence.tags) is None
        assert all(word and not re.search(r"[ \t]", word) for word in sentence.words)
        if labels is not None:
            assert set(sentence.tags) <= set(labels)


WORD = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_categories=("Cs", "Zs", "Cc")),
    min_size=1,
    max_size=8,
).filter(lambda w: w != "-DOCSTART-" and not any(c.isspace() for c in w))
CHUNK = st.one_of(
    st.just(("O", 1)), st.tuples(st.sampled_from(["PER", "LOC", "ORG", "MISC"]), st.integers(1, 3))
)


@st.composite
def iob2_sentence(draw: st.DrawFn) -> Sentence:
    tags: list[str] = []
    for kind, length in draw(st.lists(CHUNK, min_size=1, max_size=6)):
        tags += ["O"] if kind == "O" else [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
    return Sentence(tuple(draw(WORD) for _ in tags), tuple(tags))


SENTENCE_BREAKS = ["\n\n", "\n\n\n", "\n \n", "\n\t\r\n", "\n-DOCSTART- -X- -X- O\n\n", "\n-DOCSTART-\n"]


def iob2_to_iob1(tags: tuple[str, ...]) -> list[str]:
    out = []
    for i, tag in enumerate(tags):
        previous = tags[i - 1] if i else "O"
        adjacent_same_type = tag.startswith("B-") and previous != "O" and previous[2:] == tag[2:]
        out.append(tag if tag == "O" or adjacent_same_type else f"I-{tag[2:]}")
    return out


@FUZZ
@given(
    sentences=st.lists(iob2_sentence(), min_size=1, max_size=8),
    columns=st.integers(2, 5),
    separator=SEPARATOR,
    gaps=st.lists(st.sampled_from(SENTENCE_BREAKS), min_size=8, max_size=8),
    ending=st.sampled_from(["", "\n", "\n\n"]),
    iob1=st.booleans(),
)
def test_written_corpus_reads_back_identically(
    scratch: Path,
    sentences: list[Sentence],
    columns: int,
    separator: str,
    gaps: list[str],
    ending: str,
    iob1: bool,
) -> None:
    blocks = []
    for sentence in sentences:
        tags = iob2_to_iob1(sentence.tags) if iob1 else sentence.tags
        blocks.append(
            "\n".join(
                separator.join([w, *["X"] * (columns - 2), t])
                for w, t in zip(sentence.words, tags, strict=True)
            )
        )
    text = "-DOCSTART- -X- -X- O\n\n" + "".join(b + g for b, g in zip(blocks, gaps, strict=False))
    scratch.write_text(text.rstrip("\n") + ending, encoding="utf-8")
    assert read_conll(scratch) == sentences
