from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader

from peftkit.data import LengthGroupedSampler, PaddingCollator
from peftkit.errors import InvalidOptionError
from tests.test_data_tokenizers import tiny_wordpiece_tokenizer

EXAMPLES = [
    {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 2, -100]},
    {"input_ids": [8], "attention_mask": [1], "labels": [1]},
]


def test_pads_to_longest_with_pad_id_zero_mask_and_ignore_labels() -> None:
    batch = PaddingCollator(pad_token_id=9)(EXAMPLES)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, -100], [1, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_left_padding_and_multiple_of_eight() -> None:
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=8, padding_side="left")(EXAMPLES)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [0] * 7 + [8]
    assert batch["labels"][0].tolist() == [-100] * 5 + [-100, 2, -100]


def test_scalar_labels_are_stacked_for_sequence_classification() -> None:
    batch = PaddingCollator(pad_token_id=0)(
        [{"input_ids": [1, 2], "labels": 1}, {"input_ids": [3], "labels": 0}]
    )
    assert batch["labels"].tolist() == [1, 0]
    assert batch["input_ids"].tolist() == [[1, 2], [3, 0]]


def test_inconsistent_example_and_bad_options_are_rejected() -> None:
    collate = PaddingCollator(pad_token_id=0)
    with pytest.raises(InvalidOptionError, match="different lengths"):
        collate([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(InvalidOptionError, match="has keys"):
        collate([{"input_ids": [1]}, {"input_ids": [1], "labels": [0]}])
    with pytest.raises(InvalidOptionError, match="empty"):
        collate([])
    with pytest.raises(InvalidOptionError, match="padding_side"):
        PaddingCollator(0, padding_side="middle")
    with pytest.raises(InvalidOptionError, match="pad_to_multiple_of"):
        PaddingCollator(0, pad_to_multiple_of=0)


def test_from_tokenizer_uses_its_pad_token_or_explains_how_to_set_one() -> None:
    tokenizer = tiny_wordpiece_tokenizer()
    assert PaddingCollator.from_tokenizer(tokenizer).pad_token_id == tokenizer.pad_token_id

    class NoPad:
        pad_token_id = None

    with pytest.raises(InvalidOptionError, match="tokenizer.pad_token = tokenizer.eos_token"):
        PaddingCollator.from_tokenizer(NoPad())  # type: ignore[arg-type]


LENGTHS = [(i * 37) % 50 + 1 for i in range(203)]


def test_sampler_is_deterministic_per_seed_and_epoch_and_covers_every_index() -> None:
    sampler = LengthGroupedSampler(LENGTHS, batch_size=4, seed=3, mega_batch_mult=5)
    first = list(sampler)
    assert sorted(first) == list(range(len(LENGTHS)))
    assert list(LengthGroupedSampler(LENGTHS, batch_size=4, seed=3, mega_batch_mult=5)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(len(LENGTHS))) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(LengthGroupedSampler(LENGTHS, batch_size=4, seed=4, mega_batch_mult=5)) != first


def test_sampler_sorts_within_mega_batches() -> None:
    order = list(LengthGroupedSampler(LENGTHS, batch_size=4, seed=0, mega_batch_mult=5))
    for begin in range(0, len(order), 20):
        mega = [LENGTHS[i] for i in order[begin : begin + 20]]
        assert mega == sorted(mega, reverse=True)
    unshuffled = list(LengthGroupedSampler(LENGTHS, batch_size=4, shuffle=False))
    assert [LENGTHS[i] for i in unshuffled] == sorted(LENGTHS, reverse=True)


def test_length_grouping_reduces_padding() -> None:
    def padded(order: list[int]) -> int:
        return sum(
            max(LENGTHS[i] for i in order[b : b + 8]) * len(order[b : b + 8]) for b in range(0, len(order), 8)
        )

    grouped = list(LengthGroupedSampler(LENGTHS, batch_size=8, seed=0))
    random_order = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0)).tolist()
    assert padded(grouped) < padded(random_order)


@pytest.mark.parametrize("even_batches", [False, True])
@pytest.mark.parametrize("size", [203, 64])
def test_sharded_across_two_ranks_every_index_once(even_batches: bool, size: int) -> None:
    """Accelerate's prepare_data_loader wraps the batch sampler in BatchSamplerShard and calls set_epoch."""
    from accelerate.data_loader import prepare_data_loader

    lengths = LENGTHS[:size]
    for epoch in range(2):
        seen = []
        for rank in range(2):
            sampler = LengthGroupedSampler(lengths, batch_size=4, seed=7)
            loader = DataLoader(list(range(size)), batch_size=4, sampler=sampler)
            sharded = prepare_data_loader(
                loader, num_processes=2, process_index=rank, even_batches=even_batches
            )
            sharded.set_epoch(epoch)
            seen.append([i for batch in sharded for i in batch.tolist()])
            assert sampler.epoch == epoch  # Accelerate forwarded set_epoch to our sampler
        assert not set(seen[0]) & set(seen[1]) or even_batches
        everything = seen[0] + seen[1]
        assert set(everything) == set(range(size))
        if not even_batches or size % 8 == 0:
            assert sorted(everything) == list(range(size))


def test_batch_sampler_shard_directly() -> None:
    from accelerate.data_loader import BatchSamplerShard

    sampler = LengthGroupedSampler(LENGTHS, batch_size=5, seed=1)
    shards = [
        list(BatchSamplerShard(BatchSampler(sampler, 5, drop_last=False), 2, rank, even_batches=False))
        for rank in (0, 1)
    ]
    flat = [i for shard in shards for batch in shard for i in batch]
    assert sorted(flat) == list(range(len(LENGTHS)))
    # Both ranks agree on the global order: interleaving their batches gives the sampler's order back.
    interleaved = [b for pair in zip(shards[0], shards[1], strict=False) for b in pair] + shards[0][
        len(shards[1]) :
    ]
    assert [i for b in interleaved for i in b] == list(sampler)


def test_sampler_rejects_bad_options() -> None:
    with pytest.raises(InvalidOptionError, match="batch_size"):
        LengthGroupedSampler([1], batch_size=0)
    with pytest.raises(InvalidOptionError, match="mega_batch_mult"):
        LengthGroupedSampler([1], batch_size=1, mega_batch_mult=0)
