"""Time training and inference steps of several variants, interleaved round-robin.

Every round times every variant once, so slow drifts of the machine (other processes, thermal
state, frequency scaling) hit all variants alike. The starting variant rotates from round to
round (``A B C D``, ``B C D A``, ...) so no variant always runs right after the same neighbour.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

import peftkit
from benchmarks.variants import trainable_parameters

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One synthetic NER batch (token ids from the vocabulary's word range, random tags)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        """Tokens in the batch (``batch * seq_len``)."""
        return int(self.input_ids.numel())


def make_batch(
    batch: int, seq_len: int, vocab_size: int, num_labels: int, seed: int, device: str = "cpu"
) -> Batch:
    """A reproducible batch: ``[CLS] w1 ... [SEP]``-like ids, all positions attended, random labels."""
    generator = torch.Generator().manual_seed(seed)
    low = min(1000, vocab_size // 2)
    ids = torch.randint(low, vocab_size, (batch, seq_len), generator=generator)
    labels = torch.randint(0, num_labels, (batch, seq_len), generator=generator)
    labels[:, 0] = labels[:, -1] = -100  # special tokens carry no tag
    return Batch(ids.to(device), torch.ones_like(ids).to(device), labels.to(device))


@dataclass
class Runner:
    """A model plus its optimizer, able to run one training or inference step on a batch.

    Attributes:
        name: Variant name (``"fp32-lora"``, ...).
        model: The model.
        device: ``"cpu"`` or ``"cuda"``.
        trainable: Whether the variant trains (inference-only variants have no optimizer).
        step: Optimizer steps taken (AdaLoRA's schedule reads it).
        max_grad_norm: Clip gradients to this norm before each optimizer step, as the recipes do
            (``None``: no clipping).

    """

    name: str
    model: nn.Module
    device: str
    trainable: bool = True
    step: int = 0
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        # Put every sub-module in one mode: from_pretrained leaves the model in eval mode, while a
        # freshly built wrapper (peft's PeftModel) reports training=True over an eval-mode model.
        self.model.train(self.trainable)
        if self.trainable:
            self.optimizer = torch.optim.AdamW(trainable_parameters(self.model), lr=1e-5)

    def train_step(self, batch: Batch) -> None:
        """Forward, backward, optimizer step, peftkit's per-step hook (AdaLoRA budget), zero grad."""
        if not self.model.training:
            self.model.train()
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
        out.loss.backward()
        if self.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.step += 1
        peftkit.on_optimizer_step(self.model, self.step)
        self.optimizer.zero_grad(set_to_none=True)

    def forward_backward(self, batch: Batch) -> None:
        """Forward and backward only (for FLOP counting); gradients are dropped afterwards."""
        self.model.train()
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
        out.loss.backward()
        self.model.zero_grad(set_to_none=True)

    def infer_step(self, batch: Batch) -> None:
        """Eval-mode forward pass without autograd."""
        if self.model.training:
            self.model.eval()
        with torch.inference_mode():
            self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(fn: Callable[[], None], steps: int, device: str) -> tuple[float, float]:
    """Mean wall-clock and mean process CPU seconds (all threads) of ``steps`` calls of ``fn``."""
    gc.collect()
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps


@dataclass
class Samples:
    """Per-round timings of one variant: wall-clock seconds per step (the measurement) and the
    process CPU seconds per step (a cross-check: less sensitive to being descheduled by other
    processes, more to threads spinning at barriers)."""

    wall: list[float]
    cpu: list[float]


def interleaved(
    runners: Sequence[Runner],
    batch: Batch,
    kind: str,
    repeats: int,
    steps: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Samples]:
    """Seconds per step of each runner, one sample per round, rounds interleaved round-robin.

    Args:
        runners: The variants.
        batch: Input batch (the same for all).
        kind: ``"train"`` or ``"infer"``.
        repeats: Rounds (samples per variant).
        steps: Steps averaged into one sample.
        warmup: Untimed steps per runner before the first round.
        progress: Called with a short status line after each round.

    Returns:
        ``{runner name: Samples}`` with one entry per round in round order; entry ``i`` of two
        variants was measured in the same round, so per-round ratios are paired.

    """
    if kind not in ("train", "infer"):
        raise ValueError(f"kind={kind!r}: use 'train' or 'infer'.")
    calls = {
        r.name: (lambda r=r: r.train_step(batch) if kind == "train" else r.infer_step(batch)) for r in runners
    }
    for runner in runners:
        for _ in range(warmup):
            calls[runner.name]()
    samples = {r.name: Samples([0.0] * repeats, [0.0] * repeats) for r in runners}
    for round_index in range(repeats):
        offset = round_index % len(runners)
        for runner in list(runners[offset:]) + list(runners[:offset]):
            wall, cpu = time_steps(calls[runner.name], steps, runner.device)
            samples[runner.name].wall[round_index] = wall
            samples[runner.name].cpu[round_index] = cpu
        if progress is not None:
            progress(f"{kind} round {round_index + 1}/{repeats} done")
    return samples


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios of two interleaved sample lists."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]
