"""The GPU check this repository owns: memory and speed of quantised bases on CUDA, results under ``$OUT``.

::

    python3 -m benchmarks.gpu             # on a CUDA machine (bash .gpu/run.sh runs it after the tests)
    python3 -m benchmarks.gpu --dry       # the same code paths on the CPU with a tiny Llama (tests run this)

On a random Llama of TinyLlama-1.1B's shape, built directly on the GPU (``with torch.device("cuda")``:
no random initialisation on the CPU) and saved once to a scratch directory for ``load_base``:

1. **Memory** (:mod:`benchmarks.quantized_memory`): one LoRA step, batch 4 x 256, gradient
   checkpointing on every side; ``torch.cuda.max_memory_allocated`` of each variant in a fresh process
   (fp32, bf16, 8-bit and 4-bit peftkit bases; plain peft's standard 8-bit and 4-bit recipes and its
   bf16 reference), several processes at once (each has its own counter).
2. **Speed**, in this process, interleaved round-robin so drifts hit every variant alike: median time
   of a LoRA training step and of an inference forward, as ratios to the bf16 base.
3. **Step speed of the methods** (:func:`benchmarks.step_speed.measure_step_speed`) on a bf16 Llama
   of about 0.5B parameters (:data:`benchmarks.llama_shape.LLAMA_05B`, built on the GPU), batch
   16 x 256: full fine-tuning, peftkit's LoRA (r 16 on every linear layer), plain peft's LoRA,
   AdaLoRA and the adapters, as paired tokens/s ratios. Goals: LoRA >= 1.3x full fine-tuning
   and >= 1.15x plain peft.

Writes ``gpu-bench.json`` and ``gpu-bench.md`` to ``--out`` (default ``$OUT``, else
/tmp/peftkit-gpu-out), and prints the Markdown. Exit status 0 when it ran (goals are reported, not
enforced; ``--strict`` makes a failed goal exit 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``import benchmarks`` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MEMORY_VARIANTS = ["fp32", "bf16", "8bit", "4bit", "peft-8bit", "peft-4bit", "peft-bf16"]
SPEED_VARIANTS = ["bf16", "8bit", "4bit", "peft-8bit", "peft-4bit"]
STEP_VARIANTS = ["full", "lora", "peft-lora", "adalora", "adapter", "parallel"]
#: Goals of the step-speed part: ratio name -> minimum tokens/s ratio.
STEP_GOALS = {"lora/full": 1.3, "lora/peft-lora": 1.15, "adalora/full": 1.3, "adapter/full": 1.3}


def measure_method_steps(
    device: str, shape: dict[str, Any], batch: int, seq_len: int, rounds: int
) -> dict[str, Any]:
    """Paired step-speed ratios of the methods on a random bf16 Llama of ``shape`` built on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.step_speed import measure_step_speed

    def make_base() -> Any:
        torch.manual_seed(0)
        with torch.device(device):  # random initialisation on the GPU: seconds, not minutes
            return LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)

    found = measure_step_speed(
        make_base, device=device, variants=STEP_VARIANTS, batch_size=batch, seq_len=seq_len,
        rounds=rounds, warmup=2,
    )  # fmt: skip
    ratios = {name: round(r["wall"]["median"], 3) for name, r in found["ratios"].items()}
    goals = [
        {"ratio": name, "value": ratios.get(name), "goal": goal,
         "verdict": "PASS" if ratios.get(name, 0) >= goal else "FAIL"}
        for name, goal in STEP_GOALS.items()
    ]  # fmt: skip
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "tokens": found["tokens"],
        "rounds": rounds,
        "dtype": found["dtype"],
        "ratios": ratios,
        "goals": goals,
    }


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_speed(
    checkpoint: str, device: str, variants: list[str], batch: int, seq_len: int, rounds: int
) -> dict[str, Any]:
    """Median train-step and inference-forward seconds per variant, interleaved; ratios to bf16."""
    import torch

    from benchmarks.quantized_memory import build_variant, random_tokens, train_step

    models, optimizers, errors = {}, {}, {}
    for name in variants:
        try:
            models[name] = build_variant(name, checkpoint, device, checkpointing=True)
            optimizers[name] = torch.optim.AdamW(
                [p for p in models[name].parameters() if p.requires_grad], lr=1e-4
            )
        except Exception as exc:  # one variant failing must not hide the others
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
    names = list(models)
    if not names:
        return {"errors": errors}
    ids = random_tokens(batch, seq_len, models[names[0]].config.vocab_size, device)
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": []} for n in names}
    for round_ in range(rounds + 1):  # round 0 warms up (kernels, autotuning, first-call packing)
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            model = models[name]
            _sync(device)
            start = time.perf_counter()
            train_step(model, ids, optimizers[name], name)
            _sync(device)
            train_s = time.perf_counter() - start
            model.eval()
            with torch.inference_mode():
                start = time.perf_counter()
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
                _sync(device)
                infer_s = time.perf_counter() - start
            if round_:
                times[name]["train"].append(train_s)
                times[name]["infer"].append(infer_s)
    medians = {n: {k: statistics.median(v) for k, v in times[n].items()} for n in names}
    base = medians.get("bf16")
    ratios = {}
    if base:  # > 1: faster than bf16
        ratios = {n: {k: round(base[k] / m[k], 3) for k in m} for n, m in medians.items()}
    del models, optimizers
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"rounds": rounds, "median_s": medians, "speed_vs_bf16": ratios, "errors": errors}


def render(result: dict[str, Any]) -> str:
    """Markdown: the memory table (from :mod:`benchmarks.quantized_memory`) and the speed ratios."""
    from benchmarks.quantized_memory import render_markdown

    text = render_markdown(result["memory"]) if result.get("memory") else ""
    speed = result.get("speed") or {}
    if speed.get("median_s"):
        text += (
            f"\n## Speed ({speed['rounds']} interleaved rounds, medians; x bf16: > 1 is faster)\n\n"
            "| variant | train step s | x bf16 | inference s | x bf16 |\n|---|---|---|---|---|\n"
        )
        for name, m in speed["median_s"].items():
            r = speed["speed_vs_bf16"].get(name, {})
            text += f"| {name} | {m['train']:.4f} | {r.get('train', '')} | {m['infer']:.4f} | {r.get('infer', '')} |\n"
    for name, error in (speed.get("errors") or {}).items():
        text += f"\nspeed: {name} failed: {error}\n"
    steps = result.get("method_steps") or {}
    if steps.get("ratios"):
        text += (
            f"\n## Method step speed ({steps['dtype']}, {steps['tokens']} tokens per step, {steps['rounds']} "
            "paired rounds; tokens/s ratios, wall time)\n\n| ratio | value | goal | verdict |\n|---|---|---|---|\n"
        )
        goals = {g["ratio"]: g for g in steps["goals"]}
        for name, value in steps["ratios"].items():
            goal = goals.get(name)
            text += f"| {name} | {value} | {'>= ' + str(goal['goal']) if goal else ''} | {goal['verdict'] if goal else ''} |\n"
    if steps.get("error"):
        text += f"\nmethod steps failed: {steps['error']}\n"
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, a tiny Llama: every code path in seconds")
    parser.add_argument("--out", type=Path, help="results folder (default $OUT, else /tmp/peftkit-gpu-out)")
    parser.add_argument("--checkpoint", help="where the random checkpoint is (built there if absent)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds (default 5)")
    parser.add_argument("--jobs", type=int, default=4, help="memory probes at once (default 4)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="skip the methods' step-speed part")
    parser.add_argument(
        "--budget",
        type=float,
        default=float(os.environ.get("GPU_BENCH_S", 150)) - 10,
        help="seconds for the whole run (default: $GPU_BENCH_S - 10, else 140); speed is skipped when short",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if a memory goal fails")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the GPU benchmark (or its CPU dry run) and write ``gpu-bench.json`` / ``gpu-bench.md``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # plain peft's 8-bit matmuls warn per call
    import torch

    from benchmarks.llama_shape import LLAMA_05B, TINY, TINYLLAMA_1B, ensure_checkpoint
    from benchmarks.machine import describe_machine
    from benchmarks.quantized_memory import run

    if args.dry:
        device, shape, batch, seq_len, rounds = "cpu", TINY, 2, 32, 1
    elif not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device here; use --dry for the CPU rehearsal", file=sys.stderr)
        return 2
    else:
        device, shape, batch, seq_len, rounds = "cuda:0", TINYLLAMA_1B, 4, 256, args.rounds
    out = args.out or Path(os.environ.get("OUT") or "/tmp/peftkit-gpu-out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[gpu-bench {time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    def save(result: dict[str, Any]) -> str:  # after each part: a timeout later keeps what was measured
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        (out / "gpu-bench.json").write_text(json.dumps(result, indent=1) + "\n")
        text = render(result)
        (out / "gpu-bench.md").write_text(text)
        return text

    checkpoint = ensure_checkpoint(shape, args.checkpoint, device)  # on CUDA: built on the GPU
    progress(f"checkpoint ready: {checkpoint}")
    result: dict[str, Any] = {"benchmark": "gpu", "dry": args.dry, "machine": describe_machine(device)}
    save(result)
    if not args.skip_memory:
        variants = MEMORY_VARIANTS if not args.dry else ["bf16", "peft-4bit"]  # both builders
        result["memory"] = run(
            device,
            dry=args.dry,
            variants=variants,
            checkpoint=str(checkpoint),
            jobs=args.jobs if not args.dry else 2,
            timeout=max(30.0, args.budget - (time.perf_counter() - start) - 10),
            progress=progress,
        )
        save(result)
    left = args.budget - (time.perf_counter() - start)
    if not args.skip_speed and left < 30:
        result["speed"] = {"errors": {"all": f"skipped: {left:.0f} s of the {args.budget:.0f} s budget left"}}
    elif not args.skip_speed:
        variants = SPEED_VARIANTS if not args.dry else ["bf16", "8bit", "4bit", "peft-8bit"]
        result["speed"] = measure_speed(str(checkpoint), device, variants, batch, seq_len, rounds)
        progress(f"speed: {result['speed'].get('speed_vs_bf16')}")
    left = args.budget - (time.perf_counter() - start)
    if not args.skip_steps and left < 30:
        result["method_steps"] = {"error": f"skipped: {left:.0f} s of the {args.budget:.0f} s budget left"}
    elif not args.skip_steps:
        steps_shape, steps_batch = (TINY, (2, 32)) if args.dry else (LLAMA_05B, (16, 256))
        try:
            result["method_steps"] = measure_method_steps(
                device, steps_shape, *steps_batch, rounds=max(rounds, 2)
            )
        except Exception as exc:  # report it with what was measured before
            result["method_steps"] = {"error": f"{type(exc).__name__}: {exc}"}
        progress(
            f"method steps: {result['method_steps'].get('ratios') or result['method_steps'].get('error')}"
        )
    text = save(result)
    print(text)
    print(f"Results: {out / 'gpu-bench.json'}, {out / 'gpu-bench.md'}")
    failed = [g for g in (result.get("memory") or {}).get("goals", []) if g["verdict"] == "FAIL"]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
