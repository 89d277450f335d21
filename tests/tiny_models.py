"""Tiny random transformers models for tests (hidden 32, 2 layers, fixed seeds).

* ``bert``: ``BertForTokenClassification`` (5 labels) - encoder with a token-classification head.
* ``gpt2``: ``GPT2ForSequenceClassification`` (3 labels) - Conv1D projections, ``score`` head.
* ``llama``: ``LlamaForCausalLM`` - q/k/v/o projections, untied LM head (frozen by peftkit).
* ``t5`` (not in ``FAMILIES``, which the method matrix runs on): ``T5ForConditionalGeneration`` - an
  encoder-decoder (seq2seq task); its ``transformer`` base prefix names no attribute.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForTokenClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

FAMILIES = ("bert", "gpt2", "llama")
VOCAB = 120
NUM_TOKEN_LABELS = 5
NUM_SEQ_LABELS = 3


def make_config(family: str):
    """Return the tiny config of a family."""
    if family == "bert":
        return BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=NUM_TOKEN_LABELS,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            num_labels=NUM_SEQ_LABELS,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    if family == "t5":
        return T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    raise ValueError(f"unknown family {family!r}")


MODEL_CLASSES = {
    "bert": BertForTokenClassification,
    "gpt2": GPT2ForSequenceClassification,
    "llama": LlamaForCausalLM,
    "t5": T5ForConditionalGeneration,
}


def make_model(family: str, seed: int = 0) -> PreTrainedModel:
    """Build a tiny random model of ``family`` with a fixed seed, in eval mode."""
    torch.manual_seed(seed)
    return MODEL_CLASSES[family](make_config(family)).eval()


def save_tiny_model(family: str, path: str | Path, seed: int = 0) -> None:
    """Save a tiny model with ``save_pretrained`` (safetensors)."""
    make_model(family, seed).save_pretrained(str(path))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights live (``cuda:0`` for a quantised base on a GPU machine): inputs go there."""
    return next(model.parameters()).device


def on_device(
    batch: dict[str, torch.Tensor], where: torch.nn.Module | torch.device | str
) -> dict[str, torch.Tensor]:
    """``batch`` moved to a device, or to the device of a model."""
    device = model_device(where) if isinstance(where, torch.nn.Module) else where
    return {key: value.to(device) for key, value in batch.items()}


def make_batch(
    family: str, batch: int = 4, seq: int = 9, seed: int = 1, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """A fixed batch with labels suited to the family's head (the same numbers on every device)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, seq), generator=generator, device="cpu")
    attention_mask = torch.ones_like(input_ids)
    if family == "bert":
        labels = torch.randint(0, NUM_TOKEN_LABELS, (batch, seq), generator=generator, device="cpu")
    elif family == "gpt2":
        labels = torch.randint(0, NUM_SEQ_LABELS, (batch,), generator=generator, device="cpu")
    else:  # causal LM (shifted inside the model) or seq2seq (decoder inputs made from the labels)
        labels = input_ids.clone()
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return out if device is None else on_device(out, device)


def make_examples(family: str = "bert", n: int = 20, seq: int = 8) -> list[dict[str, torch.Tensor]]:
    """``make_batch(family, batch=n, seq=seq)`` split into ``n`` examples (a data set for ``Trainer``)."""
    batch = make_batch(family, batch=n, seq=seq, seed=1)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]
