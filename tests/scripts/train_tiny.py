"""A tiny but real training run for the crash and fault tests (a real subprocess, like a recipe).

LoRA on a tiny random BERT (``tests.tiny_models``), synthetic token labels, trained with
:func:`peftkit.training.train` (checkpoints, ``--resume``, fault checks). A complete run saves
the adapter to ``<output-dir>/adapter``. A peftkit error is printed as ``error: <message>`` and
exits with status 1, as the ``peftkit`` CLI does::

    python tests/scripts/train_tiny.py --output-dir runs/x --epochs 3 --checkpoint-every 2 [--resume]
        [--sleep 0.04]          # seconds per micro-batch, so that a test can kill the run mid-way
        [--nan-at-batch 11]     # the loss of this micro-batch (1-based, counted in this process) is NaN
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.tiny_models

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import peftkit  # noqa: E402
from peftkit.config import TrainConfig, parse_config  # noqa: E402
from peftkit.errors import PeftkitError  # noqa: E402
from peftkit.training import build_accelerator, train  # noqa: E402
from tests.tiny_models import make_batch, make_model  # noqa: E402


@dataclasses.dataclass
class TinyRun(TrainConfig):
    """Training options plus the knobs of the crash tests.

    Attributes:
        samples: Number of synthetic training sequences.
        sleep: Seconds to sleep per micro-batch.
        nan_at_batch: Make the loss of this micro-batch (1-based, this process) NaN.
    """

    samples: int = 32
    sleep: float = 0.0
    nan_at_batch: int | None = None


class Loss:
    """``model(**batch).loss``, slowed down or poisoned as asked."""

    def __init__(self, config: TinyRun) -> None:
        self.config, self.calls = config, 0

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        if self.config.sleep:
            time.sleep(self.config.sleep)
        loss = model(**batch).loss
        return loss * float("nan") if self.calls == self.config.nan_at_batch else loss


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)  # the same arithmetic in every run
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_config(TinyRun, argv, prog="train_tiny")
    batch = make_batch("bert", batch=config.samples, seq=8, seed=1)
    batch["labels"] = batch["input_ids"] % 5  # learnable labels
    data = [{k: v[i] for k, v in batch.items()} for i in range(config.samples)]
    model = make_model("bert").train()
    torch.manual_seed(0)
    peftkit.wrap(model, "lora", r=4)
    accelerator = build_accelerator(config)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True)
    result = train(model, loader, config, accelerator=accelerator, compute_loss=Loss(config))
    if not result.interrupted and accelerator.is_main_process:
        peftkit.save_adapter(model, Path(config.output_dir) / "adapter")
    return result.exit_code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except PeftkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
