"""A tiny random BERT token classifier saved to disk, for ``--dry`` runs and the smoke test."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForTokenClassification


def save_tiny_bert(directory: str | Path, num_labels: int = 9, seed: int = 0) -> str:
    """Save a 2-layer, hidden-32 random BERT to ``directory`` and return its path."""
    config = BertConfig(
        vocab_size=1200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = BertForTokenClassification(config)
    model.save_pretrained(str(directory))
    return str(directory)
