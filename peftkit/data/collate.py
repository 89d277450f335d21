"""Batching: dynamic padding and a length-grouped sampler that shards cleanly under Accelerate.

:class:`PaddingCollator` pads each batch only to its longest example (optionally rounded up to a
multiple of 8 for tensor cores). :class:`LengthGroupedSampler` orders examples so that each batch
holds examples of similar length, which makes dynamic padding cheap::

    shuffle all indices (seed + epoch) -> cut into mega-batches of ``mega_batch_mult * batch_size``
    -> sort each mega-batch by length, longest first -> concatenate

The order depends only on ``seed``, ``epoch`` and the lengths, so every process computes the same
order; Accelerate's ``BatchSamplerShard`` then hands batch ``k`` to process ``k % num_processes``.
Accelerate calls :meth:`LengthGroupedSampler.set_epoch` itself at the start of every epoch;
without Accelerate call it yourself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Sampler

from peftkit.errors import InvalidOptionError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class PaddingCollator:
    """Pad a list of feature dicts to the longest one and stack them into tensors.

    Sequence keys are padded as follows: ``input_ids`` with ``pad_token_id``, ``labels`` with -100,
    everything else (``attention_mask``, ``token_type_ids``, ...) with 0. Scalar values (e.g. a
    sequence-classification ``labels`` int) are stacked as they are.

    Args:
        pad_token_id: Id used to pad ``input_ids``.
        pad_to_multiple_of: Round the padded length up to a multiple of this (e.g. 8); ``None`` for none.
        padding_side: ``"right"`` (default) or ``"left"``.
        label_pad_id: Value used to pad ``labels`` (-100 is ignored by the loss).

    Example:
        >>> collate = PaddingCollator(pad_token_id=0)
        >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [1, 2, 3]}, {"input_ids": [8], "labels": [4]}])
        >>> batch["input_ids"].tolist(), batch["labels"].tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 2, 3], [4, -100, -100]])

    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        pad_to_multiple_of: int | None = None,
        padding_side: str = "right",
        label_pad_id: int = IGNORE_INDEX,
    ) -> None:
        if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
            raise InvalidOptionError(f"pad_token_id must be an int, got {pad_token_id!r}.")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise InvalidOptionError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of!r}.")
        if padding_side not in ("right", "left"):
            raise InvalidOptionError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side
        self.label_pad_id = label_pad_id

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> PaddingCollator:
        """Build a collator that pads with the tokenizer's pad token.

        Args:
            tokenizer: A tokenizer with ``pad_token_id`` set.
            **kwargs: Passed on to :class:`PaddingCollator`.

        Returns:
            The collator.

        Raises:
            InvalidOptionError: If the tokenizer has no pad token (GPT-2, Llama).

        """
        if tokenizer.pad_token_id is None:
            raise InvalidOptionError(
                f"{type(tokenizer).__name__} has no pad token; set one first, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token."
            )
        kwargs.setdefault("padding_side", getattr(tokenizer, "padding_side", "right"))
        return cls(tokenizer.pad_token_id, **kwargs)

    def _pad_value(self, key: str) -> int:
        if key == "input_ids":
            return self.pad_token_id
        if key == "labels":
            return self.label_pad_id
        return 0

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate ``examples`` into a batch of tensors (shape ``(batch, padded_length)`` for sequences)."""
        if not examples:
            raise InvalidOptionError("cannot collate an empty list of examples.")
        keys = set(examples[0])
        for index, example in enumerate(examples):
            if set(example) != keys:
                raise InvalidOptionError(
                    f"example {index} has keys {sorted(example)} but example 0 has {sorted(keys)}; encode all "
                    "examples of a batch with the same function."
                )
        sequence_keys = [key for key in examples[0] if _is_sequence(examples[0][key])]
        for index, example in enumerate(examples):
            sizes = {key: len(example[key]) for key in sequence_keys}
            if len(set(sizes.values())) > 1:
                raise InvalidOptionError(
                    f"example {index} has sequences of different lengths {sizes}; every sequence of an "
                    "example (input_ids, attention_mask, labels, ...) must have one entry per token."
                )
        longest = max((len(example[key]) for example in examples for key in sequence_keys), default=0)
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            values = [example[key] for example in examples]
            if key in sequence_keys:
                batch[key] = self._pad(key, values, longest)
            else:
                batch[key] = torch.tensor(
                    [int(v) if isinstance(v, bool) else v for v in values], device="cpu"
                )
        return batch

    def _pad(self, key: str, values: list[Any], longest: int) -> torch.Tensor:
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = torch.full((len(values), longest), self._pad_value(key), dtype=torch.long, device="cpu")
        for row, value in enumerate(values):
            tensor = torch.as_tensor(value, dtype=torch.long, device="cpu")
            if self.padding_side == "right":
                out[row, : len(tensor)] = tensor
            elif len(tensor):
                out[row, -len(tensor) :] = tensor
        return out


def _is_sequence(value: Any) -> bool:
    """Whether a feature value is a per-token sequence (as opposed to a per-example scalar)."""
    if isinstance(value, torch.Tensor):
        return value.dim() > 0
    return isinstance(value, (list, tuple))


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega_batch_mult: int = 50
) -> list[int]:
    """Shuffle indices, then sort them by length (longest first) within mega-batches.

    Args:
        lengths: Length of each example.
        batch_size: Batch size the order is made for.
        generator: Source of randomness (seed it for a reproducible order).
        mega_batch_mult: Mega-batch size in batches; larger means less padding but less randomness.

    Returns:
        A permutation of ``range(len(lengths))``.

    """
    permutation = torch.randperm(len(lengths), generator=generator, device=generator.device).tolist()
    size = max(1, mega_batch_mult * batch_size)
    order: list[int] = []
    for begin in range(0, len(permutation), size):
        mega = permutation[begin : begin + size]
        order.extend(sorted(mega, key=lambda i: lengths[i], reverse=True))
    return order


class LengthGroupedSampler(Sampler[int]):
    """Yield every index exactly once per epoch, grouped so that batches have similar lengths.

    The order is a pure function of ``(seed, epoch, lengths)``, so under Accelerate (which wraps the
    ``DataLoader``'s batch sampler in ``BatchSamplerShard``) all processes agree and each example is
    seen by exactly one process per epoch (up to the duplicates Accelerate adds to even out the last
    batches when ``even_batches=True``).

    Args:
        lengths: Length of each example (e.g. ``TokenClassificationFeatures.lengths``).
        batch_size: Per-process batch size of the ``DataLoader``.
        seed: Base seed; epoch ``e`` uses ``seed + e``.
        mega_batch_mult: Mega-batch size in batches (see :func:`length_grouped_indices`).
        shuffle: If ``False``, simply sort all indices by length, longest first (for evaluation when
            order does not matter).

    Example:
        >>> sampler = LengthGroupedSampler([3, 1, 2, 5], batch_size=2, seed=0)
        >>> sorted(sampler)
        [0, 1, 2, 3]

    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        mega_batch_mult: int = 50,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise InvalidOptionError(f"batch_size must be >= 1, got {batch_size}.")
        if mega_batch_mult < 1:
            raise InvalidOptionError(f"mega_batch_mult must be >= 1, got {mega_batch_mult}.")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields.

        Args:
            epoch: The epoch number (0-based).

        """
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(sorted(range(len(self.lengths)), key=lambda i: (-self.lengths[i], i)))
        generator = torch.Generator(device="cpu")
        generator.manual_seed(self.seed + self.epoch)
        return iter(length_grouped_indices(self.lengths, self.batch_size, generator, self.mega_batch_mult))
