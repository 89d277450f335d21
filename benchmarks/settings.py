"""What one benchmark run measures: shapes, repeats, variants, and the three presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Realistic NER batch shapes (batch size, sequence length): same token count, different seq lengths.
NER_SHAPES: tuple[tuple[int, int], ...] = ((32, 32), (16, 64))

#: Training variants: (precision, method). Full fine-tuning of int8 weights is impossible (they
#: cannot carry gradients), so ``("int8", "full")`` is listed in the report as not applicable.
TRAIN_VARIANTS: tuple[tuple[str, str], ...] = (
    ("fp32", "full"),
    ("fp32", "lora"),
    ("fp32", "adalora"),
    ("fp32", "adapter"),
    ("int8", "lora"),
    ("int8", "adalora"),
    ("int8", "adapter"),
)

#: The reference for peftkit's overhead: the same LoRA built directly with peft.
PEFT_REFERENCE = ("fp32", "peft-lora")

#: LoRA hyper-parameters shared by peftkit's LoRA and the peft reference.
LORA_OPTIONS: dict[str, Any] = {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ["query", "value"]}


@dataclass
class BenchSettings:
    """Knobs of one benchmark run.

    Attributes:
        preset: ``"full"``, ``"quick"`` or ``"dry"``.
        shapes: (batch, seq_len) pairs to time.
        repeats: Timed rounds; every round times every variant once (round-robin).
        steps_per_repeat: Steps timed together in one sample (their mean is the sample).
        warmup: Untimed steps per variant and shape before the first round.
        overhead_rounds: Alternating single training steps of peftkit's and peft's LoRA (each), per shape.
        memory_shape: Shape used by the peak-memory probes.
        memory_steps: Training steps run by each peak-memory probe.
        memory_mode: ``"subprocess"`` (clean peak per variant), ``"inprocess"`` or ``"off"``.
        memory_variants: Variant names probed for memory (``None``: all training variants).
        gemm_size: Side of the square fp32 matmul measuring the machine's GEMM peak.
        gemm_repeats: Matmuls timed for the GEMM peak (best one counts).
        int8_speed_repeats: ``repeats`` handed to ``measure_int8_vs_fp32``.
        step_speed_rounds: Rounds of :func:`benchmarks.step_speed.measure_step_speed` (one step of
            every method per round, at the NER recipe's shape and LoRA options; 0 skips it).
        step_speed_shape: Its batch (sequences, tokens): the recipe's 32 sentences of ~40 pieces.
        threads: torch intra-op threads (``None``: torch's default, all cores). The dry run uses 1:
            tiny ops on two threads stall at every OpenMP barrier when other processes load the CPU.
        num_labels: Classes of the token-classification head (CoNLL-2003: 9).
        seed: Seed of the inputs and the new weights.

    """

    preset: str = "full"
    shapes: list[tuple[int, int]] = field(default_factory=lambda: list(NER_SHAPES))
    repeats: int = 7
    steps_per_repeat: int = 2
    warmup: int = 2
    overhead_rounds: int = 30
    memory_shape: tuple[int, int] = (16, 64)
    memory_steps: int = 3
    memory_mode: str = "subprocess"
    memory_variants: list[str] | None = None
    gemm_size: int = 2048
    gemm_repeats: int = 10
    int8_speed_repeats: int = 5
    step_speed_rounds: int = 30
    step_speed_shape: tuple[int, int] = (32, 40)
    threads: int | None = None
    num_labels: int = 9
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return asdict(self)


def preset(name: str) -> BenchSettings:
    """Settings of a named preset.

    * ``full``: 7 rounds x 2 steps per variant and shape, 30 peftkit/peft step pairs, 30 rounds of
      the recipe-shape step speed.
    * ``quick``: one shape (32x32), 3 rounds x 1 step, 40 peftkit/peft step pairs, 16 rounds of the
      recipe-shape step speed (a few minutes on 2 quiet cores).
    * ``dry``: one round on a tiny random BERT, no subprocesses (seconds; for the smoke test).

    """
    if name == "full":
        return BenchSettings(preset="full")
    if name == "quick":
        return BenchSettings(
            preset="quick",
            shapes=[NER_SHAPES[0]],
            overhead_rounds=40,
            repeats=3,
            steps_per_repeat=1,
            warmup=1,
            memory_steps=2,
            gemm_repeats=5,
            int8_speed_repeats=3,
            step_speed_rounds=16,
        )
    if name == "dry":
        return BenchSettings(
            preset="dry",
            shapes=[(4, 16)],
            repeats=1,
            steps_per_repeat=1,
            warmup=0,
            overhead_rounds=2,
            memory_shape=(4, 16),
            memory_steps=1,
            memory_mode="inprocess",
            memory_variants=["fp32-full", "fp32-lora", "int8-lora"],
            gemm_size=256,
            gemm_repeats=2,
            int8_speed_repeats=1,
            step_speed_rounds=1,
            step_speed_shape=(4, 16),
            threads=1,
        )
    raise ValueError(f"Unknown preset {name!r}: use 'full', 'quick' or 'dry'.")
