"""Tagging schemes for chunk labels (IOB1, IOB2, IOBES, BILOU) and conversion to IOB2.

In **IOB2** every entity starts with ``B-``. In **IOB1** (the original CoNLL-2003 release)
``B-`` is used only to separate two adjacent entities of the same type, so entities usually
start with ``I-``. seqeval's strict mode and most BERT recipes expect IOB2; everything read by
:mod:`peftkit.data` is therefore converted to IOB2.

Example:
    >>> iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC"])
    ['B-PER', 'I-PER', 'O', 'B-LOC', 'B-LOC']

"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from peftkit.errors import InvalidOptionError, did_you_mean

SCHEMES = ("IOB1", "IOB2", "IOBES", "BILOU")
PREFIXES = frozenset("BIESLU")


def split_tag(tag: str) -> tuple[str, str]:
    """Split a tag into ``(prefix, entity_type)``.

    Args:
        tag: ``"O"`` or ``"<P>-<TYPE>"`` with ``P`` one of ``B I E S L U``.

    Returns:
        ``("O", "")`` for ``"O"``, else e.g. ``("B", "PER")``.

    Raises:
        ValueError: If the tag has neither form (the caller turns this into a located error).

    """
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in PREFIXES:
        return tag[0], tag[2:]
    raise ValueError(
        f"malformed tag {tag!r}: expected 'O' or a prefix B-/I-/E-/S-/L-/U- and a type, e.g. 'B-PER'"
    )


def _starts_chunk_with_inside(tags: Sequence[str], i: int) -> bool:
    """Whether ``tags[i]`` is an ``I-`` tag that opens a new chunk (legal in IOB1 only)."""
    prefix, kind = split_tag(tags[i])
    if prefix != "I":
        return False
    if i == 0:
        return True
    prev_prefix, prev_kind = split_tag(tags[i - 1])
    return prev_prefix == "O" or prev_kind != kind


def first_iob2_violation(tags: Sequence[str]) -> int | None:
    """Return the index of the first ``I-`` tag that opens a chunk, or ``None`` if the tags are IOB2.

    Args:
        tags: One sentence's tags.

    Returns:
        The offending position, or ``None``.

    """
    for i in range(len(tags)):
        if _starts_chunk_with_inside(tags, i):
            return i
    return None


def detect_scheme(tag_sequences: Iterable[Sequence[str]]) -> str:
    """Guess the tagging scheme of a corpus.

    Rules, in order: any ``E-``/``S-`` tag means ``"IOBES"``; any ``L-``/``U-`` tag means ``"BILOU"``;
    any ``I-`` tag that opens a chunk (sentence start, after ``O`` or after another type) means
    ``"IOB1"``; otherwise ``"IOB2"`` (an all-``O`` corpus is valid IOB2).

    Args:
        tag_sequences: The tags of each sentence.

    Returns:
        One of :data:`SCHEMES`.

    Raises:
        ValueError: If a tag is malformed.

    Example:
        >>> detect_scheme([["I-PER", "O"], ["B-LOC"]])
        'IOB1'

    """
    prefixes: set[str] = set()
    iob1 = False
    for tags in tag_sequences:
        for i, tag in enumerate(tags):
            prefixes.add(split_tag(tag)[0])
            iob1 = iob1 or _starts_chunk_with_inside(tags, i)
    if prefixes & {"E", "S"}:
        return "IOBES"
    if prefixes & {"L", "U"}:
        return "BILOU"
    return "IOB1" if iob1 else "IOB2"


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert one sentence from IOB1 to IOB2: an ``I-`` tag that opens a chunk becomes ``B-``.

    Args:
        tags: One sentence's IOB1 tags (IOB2 input is returned unchanged).

    Returns:
        The IOB2 tags.

    """
    return [f"B-{tag[2:]}" if _starts_chunk_with_inside(tags, i) else tag for i, tag in enumerate(tags)]


def iobes_to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert one sentence from IOBES or BILOU to IOB2 (``S``/``U`` -> ``B``, ``E``/``L`` -> ``I``).

    Args:
        tags: One sentence's tags.

    Returns:
        The IOB2 tags.

    """
    mapping = {"S": "B", "U": "B", "E": "I", "L": "I"}
    return [f"{mapping[tag[0]]}{tag[1:]}" if tag[:1] in mapping and tag[1:2] == "-" else tag for tag in tags]


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """Convert one sentence's tags from ``scheme`` to IOB2.

    Args:
        tags: One sentence's tags.
        scheme: One of :data:`SCHEMES`.

    Returns:
        The IOB2 tags.

    Raises:
        InvalidOptionError: If ``scheme`` is unknown.

    """
    if scheme == "IOB2":
        return list(tags)
    if scheme == "IOB1":
        return iob1_to_iob2(tags)
    if scheme in ("IOBES", "BILOU"):
        # An IOBES corpus written with I- chunk starts is not valid IOBES, but fix it anyway.
        return iob1_to_iob2(iobes_to_iob2(tags))
    raise InvalidOptionError(
        f"unknown tagging scheme {scheme!r}; use one of {SCHEMES}.{did_you_mean(scheme, SCHEMES)}"
    )


def inside_form(tag: str) -> str:
    """Return the ``I-`` form of a tag (``"B-PER"`` -> ``"I-PER"``; ``"O"`` stays ``"O"``).

    Args:
        tag: An IOB2 tag.

    Returns:
        The tag a non-first word piece of the same word gets with ``label_all_pieces=True``.

    """
    return tag if tag == "O" else f"I-{tag[2:]}"
