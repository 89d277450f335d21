"""One benchmark run: memory probes, GEMM peak, interleaved timing, FLOPs, sizes, goals.

Order matters: memory probes (separate processes) run first and alone, then everything that
is timed runs in this process, one measurement at a time.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import flops as flop_tools
from benchmarks import sizes
from benchmarks.goals import Goal
from benchmarks.machine import describe_machine, load_average
from benchmarks.measure import Batch, Runner, interleaved, make_batch, paired_ratios
from benchmarks.memory import measure_peaks
from benchmarks.settings import PEFT_REFERENCE, TRAIN_VARIANTS, BenchSettings
from benchmarks.stats import summarize
from benchmarks.step_speed import measure_step_speed
from benchmarks.variants import build_variant, count_parameters, describe_int8, load_base, variant_name
from peftkit.quantization import quantized_linear_bytes

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PEFTKIT_LORA = variant_name("fp32", "lora")
PEFT_LORA = variant_name(*PEFT_REFERENCE)
FULL = variant_name("fp32", "full")


def run_benchmark(
    settings: BenchSettings,
    model_path: str,
    model_label: str,
    device: str,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure everything and return the JSON-ready result (see ``benchmarks/README`` in latest.md)."""
    started = time.perf_counter()
    train_specs = [*TRAIN_VARIANTS, PEFT_REFERENCE]
    result: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "date": dt.date.today().isoformat(),
        "preset": settings.preset,
        "settings": settings.to_dict(),
        "machine": describe_machine(device),
        "model": {"label": model_label, "base_checkpoint_bytes": sizes.base_checkpoint_bytes(model_path)},
        "load_average": {"start": load_average()},
        "variants": {},
        "shapes": [],
    }

    progress(f"memory probes ({settings.memory_mode}) ...")
    probed = [
        (p, m)
        for p, m in train_specs
        if settings.memory_variants is None or variant_name(p, m) in settings.memory_variants
    ]
    memory = measure_peaks(
        {variant_name(p, m): _probe_spec(settings, model_path, p, m, device) for p, m in probed},
        settings.memory_mode,
    )

    progress("GEMM peak ...")
    peaks = [flop_tools.gemm_peak(settings.gemm_size, settings.gemm_repeats, device)]

    progress("loading variants ...")
    runners = [_runner(model_path, p, m, settings, device) for p, m in train_specs]
    base = runners[0].model
    result["model"].update(
        model_type=base.config.model_type,
        layers=base.config.num_hidden_layers,
        hidden=base.config.hidden_size,
        params=count_parameters(base)["total"],
    )

    for batch_size, seq_len in settings.shapes:
        result["shapes"].append(_measure_shape(runners, settings, batch_size, seq_len, device, progress))

    peaks.append(flop_tools.gemm_peak(settings.gemm_size, settings.gemm_repeats, device))
    best = max(peaks, key=lambda p: p["best_flops"])
    result["gemm_peak"] = {**best, "runs": peaks}
    _add_mfu(result, best["best_flops"])

    progress("adapter files, parameter counts ...")
    for runner in runners:
        precision, method = runner.name.split("-", 1)
        result["variants"][runner.name] = {
            "precision": precision,
            "method": method,
            **count_parameters(runner.model),
            "adapter_file": sizes.adapter_file_bytes(runner.model, method),
            "memory": memory.get(runner.name),
        }
    int8_model = next(r.model for r in runners if r.name.startswith("int8-"))
    result["int8_linear"] = quantized_linear_bytes(int8_model).as_dict()
    result["int8_paths"] = {r.name: describe_int8(r.model) for r in runners if r.name.startswith("int8-")}
    del runners, base, int8_model
    gc.collect()

    if settings.step_speed_rounds:
        batch_size, seq_len = settings.step_speed_shape
        progress(
            f"step speed at the recipe's shape {batch_size}x{seq_len}, {settings.step_speed_rounds} rounds ..."
        )
        result["step_speed"] = measure_step_speed(
            lambda: load_base(model_path, "fp32", settings.num_labels, settings.seed, device),
            device=device,
            batch_size=batch_size,
            seq_len=seq_len,
            rounds=settings.step_speed_rounds,
            progress=progress,
        )
        gc.collect()

    progress("8-bit vs fp32 inference (quantization helper) ...")
    for shape in result["shapes"]:
        shape["int8_speed"] = _int8_speed(model_path, shape["batch"], shape["seq_len"], settings)

    result["goals"] = [goal.to_dict() for goal in evaluate_goals(result)]
    result["load_average"]["end"] = load_average()
    result["elapsed_s"] = time.perf_counter() - started
    return result


def evaluate_goals(result: dict[str, Any]) -> list[Goal]:
    """The project's measurable goals, computed from a result dict."""
    goals = []
    on_cpu = not str(result["machine"].get("device", "cpu")).startswith("cuda")
    for shape in result["shapes"]:
        label = f"{shape['batch']}x{shape['seq_len']}"
        overhead = shape.get("peft_overhead")
        stat = (overhead["cpu_stat"] if on_cpu else overhead["stat"]) if overhead else None
        goals.append(
            Goal(
                f"peftkit LoRA / peft LoRA training step time ({label})",
                stat["median"] if stat else None,
                "<=",
                1.02,
                spread=_spread(stat) if stat else "",
                note=(
                    f"{overhead['stat']['n']} alternating step pairs, median of paired "
                    f"{'CPU-time' if on_cpu else 'wall-time'} ratios; wall-time ratio "
                    f"{overhead['stat']['median']:.3f} {_spread(overhead['stat'])}, CPU-time ratio "
                    f"{overhead['cpu_stat']['median']:.3f} {_spread(overhead['cpu_stat'])}, fastest-step ratio "
                    f"{overhead['fastest_ratio']:.3f}"
                )
                if overhead
                else "",
            )
        )
    goals += step_speed_goals(result.get("step_speed"), on_cpu)
    for shape in result["shapes"]:
        speed = shape.get("int8_speed") or {}
        goals.append(
            Goal(
                f"8-bit / fp32 inference speed ({shape['batch']}x{shape['seq_len']})",
                _speedup(speed),
                ">=",
                1.5,
                spread=f"[{speed['speedup_q1']:.2f}-{speed['speedup_q3']:.2f}]"
                if "speedup_q1" in speed
                else "",
                note="benchmarks.int8_speed.measure_int8_vs_fp32 (peftkit's fast int8 path)",
            )
        )
    int8 = result.get("int8_linear") or {}
    goals.append(
        Goal(
            "8-bit / fp32 linear weight bytes",
            int8.get("ratio"),
            "<=",
            0.27,
            note="peftkit.quantization.quantized_linear_bytes: int8 codes + fp32 row scales vs fp32 weights "
            "(as stored; the fast CPU path's packed copy is reported in the 8-bit section)",
        )
    )
    base_bytes = result["model"]["base_checkpoint_bytes"]
    lora = result["variants"].get(PEFTKIT_LORA, {}).get("adapter_file", {})
    goals.append(
        Goal(
            "LoRA adapter file / base checkpoint size",
            lora["weights_bytes"] / base_bytes if lora and base_bytes else None,
            "<",
            0.01,
            note="adapter_model.safetensors (LoRA r=8 q,v + head) / model.safetensors",
        )
    )
    lora_mem = (result["variants"].get(PEFTKIT_LORA, {}).get("memory") or {}).get("peak_rss_mb")
    full_mem = (result["variants"].get(FULL, {}).get("memory") or {}).get("peak_rss_mb")
    goals.append(
        Goal(
            "LoRA / full fine-tuning peak RSS (fp32)",
            lora_mem / full_mem if lora_mem and full_mem else None,
            "<",
            1.0,
            note="clean per-process peaks (subprocess probes)",
        )
    )
    return goals


#: Step-speed goals (issue #21): (ratio key, target, what it says).
STEP_SPEED_GOALS = (
    ("lora/full", 1.4, "LoRA r 16, all linear layers / full fine-tuning, tokens/s"),
    ("lora/peft-lora", 1.15, "peftkit LoRA / peft LoRA (same options), tokens/s"),
    ("adalora/full", 1.3, "AdaLoRA, all linear layers / full fine-tuning, tokens/s"),
    ("adapter/full", 1.3, "Adapter (Houlsby) / full fine-tuning, tokens/s"),
    ("pfeiffer/full", 1.3, "Adapter (Pfeiffer) / full fine-tuning, tokens/s"),
    ("parallel/full", 1.3, "Parallel adapter / full fine-tuning, tokens/s"),
)


def step_speed_goals(speed: dict[str, Any] | None, on_cpu: bool) -> list[Goal]:
    """Goals on the recipe-shape step ratios of :func:`benchmarks.step_speed.measure_step_speed`.

    On CPU the value is the median of the paired *CPU-time* ratios (what a step costs, robust to
    other jobs on the machine), with the wall-time ratio in the note; on GPUs, wall time.
    """
    goals = []
    for key, target, what in STEP_SPEED_GOALS:
        ratio = (speed or {}).get("ratios", {}).get(key)
        label = f"{what} ({speed['batch']}x{speed['seq_len']})" if speed else what
        if ratio is None:
            goals.append(Goal(label, None, ">=", target))
            continue
        main, other = ("cpu", "wall") if on_cpu else ("wall", "cpu")
        goals.append(
            Goal(
                label,
                ratio[main]["median"],
                ">=",
                target,
                spread=_spread(ratio[main]),
                note=f"{speed['rounds']} interleaved rounds, median of paired {main}-time ratios; "
                f"{other}-time ratio {ratio[other]['median']:.3f} {_spread(ratio[other])}; "
                f"{speed['threads']} thread(s), {speed['dtype']}",
            )
        )
    return goals


def _measure_shape(
    runners: list[Runner],
    settings: BenchSettings,
    batch_size: int,
    seq_len: int,
    device: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    vocab = runners[0].model.config.vocab_size
    batch = make_batch(batch_size, seq_len, vocab, settings.num_labels, settings.seed, device)
    one = make_batch(1, seq_len, vocab, settings.num_labels, settings.seed, device)
    label = f"{batch_size}x{seq_len}"
    shape: dict[str, Any] = {
        "batch": batch_size,
        "seq_len": seq_len,
        "tokens": batch.tokens,
        "train": {},
        "infer": {},
    }

    counted = {}
    for runner in runners:
        if runner.name.startswith("fp32-"):
            counted[runner.name.split("-", 1)[1]] = flop_tools.count_train_flops(runner, one, batch_size)

    progress(f"[{label}] training, {len(runners)} variants x {settings.repeats} rounds ...")
    train = interleaved(
        runners,
        batch,
        "train",
        settings.repeats,
        settings.steps_per_repeat,
        settings.warmup,
        lambda msg: progress(f"[{label}] {msg}"),
    )
    for runner in runners:
        method = runner.name.split("-", 1)[1]
        flops_method = "lora" if method == "peft-lora" else method
        shape["train"][runner.name] = {
            "seconds": train[runner.name].wall,
            "cpu_seconds": train[runner.name].cpu,
            "tokens_per_s": summarize([batch.tokens / s for s in train[runner.name].wall]).to_dict(),
            "flops_per_step": counted.get(flops_method),
            "flops_source": "counted"
            if runner.name.startswith("fp32-")
            else f"nominal (fp32-{flops_method})",
            "analytic_flops": flop_tools.analytic_train_flops(runner.model, batch_size, seq_len),
        }
    shape["peft_overhead"] = _peft_overhead(
        runners, batch, settings, lambda msg: progress(f"[{label}] {msg}")
    )

    progress(f"[{label}] inference, {len(runners)} variants x {settings.repeats} rounds ...")
    infer = interleaved(
        runners,
        batch,
        "infer",
        settings.repeats,
        settings.steps_per_repeat,
        settings.warmup,
        lambda msg: progress(f"[{label}] {msg}"),
    )
    for name, samples in infer.items():
        shape["infer"][name] = {
            "seconds": samples.wall,
            "cpu_seconds": samples.cpu,
            "tokens_per_s": summarize([batch.tokens / s for s in samples.wall]).to_dict(),
        }
    for runner in runners:  # back to training mode for the next shape
        runner.model.train()
    return shape


def _peft_overhead(
    runners: list[Runner], batch: Batch, settings: BenchSettings, progress: Callable[[str], None]
) -> dict[str, Any]:
    """peftkit LoRA vs the same LoRA built with peft: a dedicated A/B phase of single steps.

    The two runners alternate A B, B A, A B, ... (``interleaved`` rotates the start), so each
    ratio compares two steps taken seconds apart; the median of these paired ratios is the goal
    value. Also reported: the ratio of the fastest steps and the same pairing on CPU time.
    """
    pair = [next(r for r in runners if r.name == name) for name in (PEFTKIT_LORA, PEFT_LORA)]
    progress(f"peftkit vs peft LoRA: {settings.overhead_rounds} alternating single steps each ...")
    samples = interleaved(pair, batch, "train", settings.overhead_rounds, 1, 0)
    ours, theirs = samples[PEFTKIT_LORA], samples[PEFT_LORA]
    ratios = paired_ratios(ours.wall, theirs.wall)
    cpu_ratios = paired_ratios(ours.cpu, theirs.cpu)
    return {
        "ratios": ratios,
        "stat": summarize(ratios).to_dict(),
        "cpu_ratios": cpu_ratios,
        "cpu_stat": summarize(cpu_ratios).to_dict(),
        "fastest_ratio": min(ours.wall) / min(theirs.wall),
    }


def _add_mfu(result: dict[str, Any], peak_flops: float) -> None:
    for shape in result["shapes"]:
        for entry in shape["train"].values():
            if entry["flops_per_step"]:
                values = [flop_tools.mfu(entry["flops_per_step"], s, peak_flops) for s in entry["seconds"]]
                entry["mfu"] = summarize(values).to_dict()
            else:
                entry["mfu"] = None


def _runner(model_path: str, precision: str, method: str, settings: BenchSettings, device: str) -> Runner:
    model = build_variant(model_path, precision, method, settings.num_labels, settings.seed, device)
    return Runner(variant_name(precision, method), model, device)


def _probe_spec(
    settings: BenchSettings, model_path: str, precision: str, method: str, device: str
) -> dict[str, Any]:
    batch, seq_len = settings.memory_shape
    return {
        "model_path": model_path,
        "precision": precision,
        "method": method,
        "batch": batch,
        "seq_len": seq_len,
        "steps": settings.memory_steps,
        "num_labels": settings.num_labels,
        "seed": settings.seed,
        "device": device,
    }


def _int8_speed(model_path: str, batch: int, seq_len: int, settings: BenchSettings) -> dict[str, Any] | None:
    try:
        from benchmarks.int8_speed import measure_int8_vs_fp32
    except ImportError as exc:
        return {"error": f"benchmarks.int8_speed not available: {exc}"}
    try:
        measured = measure_int8_vs_fp32(model_path, batch, seq_len, settings.int8_speed_repeats)
    except Exception as exc:  # another helper's code: record the failure, keep the other numbers
        logger.exception("measure_int8_vs_fp32 failed")
        return {"error": f"{type(exc).__name__}: {exc}"}
    return _jsonable(measured)


def _speedup(speed: dict[str, Any]) -> float | None:
    for key in ("speedup", "fast_speedup", "int8_speedup", "ratio"):
        value = speed.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _spread(stat: dict[str, Any]) -> str:
    return f"[{stat['q1']:.3f}-{stat['q3']:.3f}]" if stat["n"] > 1 else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
