"""``--tiny``: a tiny random BERT, its tokenizer and a few dozen synthetic examples per task.

Every cell then takes seconds (mostly the recipe's start-up), which is what the resumability test
needs; the scores mean nothing. Everything is written under one directory and rebuilt
deterministically (fixed seeds) when missing.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

PEOPLE, PLACES, FILLER = (
    ["peter", "mary", "john"],
    ["berlin", "paris", "rome"],
    ["the", "to", "and", "of", "said"],
)
POSITIVE, NEGATIVE = ["great", "superb", "fun"], ["dull", "awful", "flat"]
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tokenizer(words: list[str]):
    """A lowercasing WordPiece fast tokenizer over ``words`` plus single characters."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = string.ascii_lowercase + string.digits
    vocab = _SPECIALS + words + list(chars + string.punctuation) + [f"##{c}" for c in chars]
    ids = {token: index for index, token in enumerate(dict.fromkeys(vocab))}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip


def save_tiny_bert(directory: Path) -> Path:
    """A 2-layer, hidden-32 random ``BertModel`` (with pooler) and its tokenizer in ``directory``."""
    import torch
    from transformers import BertConfig, BertModel

    if (directory / "config.json").is_file():
        return directory
    tokenizer = _tokenizer(PEOPLE + PLACES + FILLER + POSITIVE + NEGATIVE)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    BertModel(config).save_pretrained(directory)
    return directory


def _conll(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    blocks = []
    for _ in range(count):
        words = []
        for _ in range(rng.randint(2, 4)):
            kind = rng.choice(["O", "PER", "LOC"])
            names = {"O": FILLER, "PER": PEOPLE, "LOC": PLACES}[kind]
            words.append(f"{rng.choice(names)} {'O' if kind == 'O' else 'B-' + kind}")
        blocks.append("\n".join(words))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def _reviews(path: Path, count: int) -> Path:
    rng = random.Random(4)
    rows = ["category,text,movie_name,has_plot_and_reviews"]
    for index in range(count):
        positive = index % 2 == 0
        words = [rng.choice(POSITIVE if positive else NEGATIVE), *rng.sample(FILLER, 2), str(index)]
        rows.append(f"{'fresh' if positive else 'rotten'},{' '.join(words)},film,False")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def tiny_args(root: Path) -> dict[str, list[str]]:
    """Build the tiny model and data under ``root``; return the extra recipe options per task."""
    root.mkdir(parents=True, exist_ok=True)
    model = save_tiny_bert(root / "bert")
    conll = {split: _conll(root / f"{split}.txt", n, seed) for split, n, seed in
             (("train", 32, 1), ("valid", 12, 2), ("test", 12, 3))}  # fmt: skip
    reviews = _reviews(root / "reviews.csv", 40)
    short = ["--model-path", str(model), "--epochs", "2", "--batch-size", "8", "--eval-batch-size", "8",
             "--max-length", "32", "--log-every", "2"]  # fmt: skip
    return {
        "ner": [*short, *(f"--{split}-file={path}" for split, path in conll.items())],
        "sentiment": [*short, "--data-file", str(reviews)],
    }
