"""Peak memory of one LoRA step on a quantised base, against bf16 and against plain peft's standard recipe.

::

    python -m benchmarks.quantized_memory            # CPU or CUDA, a random Llama of TinyLlama-1.1B's shape
    python -m benchmarks quantized-memory --dry      # the same code paths on a tiny Llama, in seconds

One LoRA step (r 8, alpha 16, ``q_proj`` / ``v_proj``, AdamW) on a batch of 4 x 256 random tokens,
with gradient checkpointing on every side (``--no-checkpointing``: off on every side), for each
variant in a **fresh process** (a process's peak never goes down, and allocator pools outlive the
objects that filled them):

=============  ===============================================================================
fp32           ``peftkit.load_base(path, dtype=float32)`` + ``peftkit.wrap``
bf16           ``peftkit.load_base(path, dtype=bfloat16)``: the baseline of the ratios
8bit           ``peftkit.load_base(path, load_in_8bit=True, dtype=bfloat16)``
8bit-fast      the same with the fast int8 CPU path on (CPU only; its packed weight copy is the cost)
4bit           ``peftkit.load_base(path, load_in_4bit=True)`` (NF4, bf16 compute)
peft-8bit      plain peft's standard recipe: ``from_pretrained(quantization_config=8-bit)``,
               ``prepare_model_for_kbit_training``, ``get_peft_model``, forward under bf16 autocast
peft-4bit      the same with QLoRA's 4-bit config (NF4, double quantisation, bf16 compute)
peft-bf16      plain peft on the bf16 model (checkpointing, input grads), for reference
=============  ===============================================================================

Memory is measured above the process's baseline: on CUDA ``torch.cuda.max_memory_allocated`` (0
before loading); on the CPU the peak resident set (``VmHWM``) minus the resident set after every
import and before loading. Both include loading. Goals: 8-bit <= 0.65x bf16, 4-bit <= 0.5x bf16,
and each below plain peft's recipe of the same bit width measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``import benchmarks`` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MARKER = "BENCH_QMEM_RESULT "
RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("fp32", "bf16", "8bit", "8bit-fast", "4bit", "peft-8bit", "peft-4bit", "peft-bf16")
CPU_ONLY = ("8bit-fast",)
TARGETS = ["q_proj", "v_proj"]


# --------------------------------------------------------------------------- one variant, in its own process


def _peftkit_variant(variant: str, path: str, device: str, checkpointing: bool, r: int) -> Any:
    import torch

    import peftkit

    options: dict[str, Any] = {
        "fp32": {"dtype": torch.float32},
        "bf16": {"dtype": torch.bfloat16},
        "8bit": {"load_in_8bit": True, "dtype": torch.bfloat16},
        "8bit-fast": {"load_in_8bit": True, "dtype": torch.bfloat16, "fast_int8": True},
        "4bit": {"load_in_4bit": True},
    }[variant]
    model = peftkit.load_base(
        path, task="causal-lm", device_map={"": device}, gradient_checkpointing=checkpointing, **options
    )
    return peftkit.wrap(model, "lora", r=r, alpha=2 * r, target_modules=TARGETS)


def _peft_variant(variant: str, path: str, device: str, checkpointing: bool, r: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if variant == "peft-bf16":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map={"": device})
        for param in model.parameters():
            param.requires_grad_(False)
        if checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    else:
        config = (
            BitsAndBytesConfig(load_in_8bit=True)
            if variant == "peft-8bit"
            else BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=config, device_map={"": device}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    lora = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def build_variant(variant: str, path: str, device: str, checkpointing: bool, r: int = 8) -> Any:
    """The LoRA-wrapped model of ``variant`` (see the module docstring), on ``device``."""
    build = _peft_variant if variant.startswith("peft-") else _peftkit_variant
    return build(variant, path, device, checkpointing, r)


def autocast_for(variant: str, device: str) -> Any:
    """peft's quantised recipes run the forward under bf16 autocast (over fp32 up-cast weights); others none."""
    import contextlib

    import torch

    if variant in ("peft-8bit", "peft-4bit"):
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def random_tokens(batch: int, seq_len: int, vocab: int, device: str, seed: int = 0) -> Any:
    """A reproducible batch of token ids (the same numbers on every device)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq_len), generator=generator, device="cpu").to(device)


def train_step(model: Any, ids: Any, optimizer: Any, variant: str) -> float:
    """One LoRA step (causal-LM loss on ``ids``); returns the loss."""
    import torch

    model.train()
    with autocast_for(variant, str(ids.device)):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one variant, run one LoRA step, and return its memory (MiB) and times (s).

    Args:
        spec: ``checkpoint``, ``variant``, ``device``, ``batch``, ``seq_len``, ``checkpointing``,
            ``r``, ``seed``.

    """
    import bitsandbytes  # noqa: F401  (imported before the baseline, like everything else)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import peftkit  # noqa: F401
    from benchmarks.memory import current_rss_mb, peak_rss_mb

    device = spec["device"]
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_mb()
    start = time.perf_counter()
    variant = spec["variant"]
    model = build_variant(variant, spec["checkpoint"], device, spec["checkpointing"], spec["r"])
    load_s = time.perf_counter() - start
    rss_loaded = current_rss_mb()
    ids = random_tokens(spec["batch"], spec["seq_len"], model.config.vocab_size, device, spec["seed"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    start = time.perf_counter()
    loss = train_step(model, ids, optimizer, variant)
    if on_cuda:
        torch.cuda.synchronize()
    step_s = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    result = {
        "variant": variant,
        "rss_before_mb": rss_before,
        "rss_loaded_mb": rss_loaded,
        "rss_peak_mb": peak_rss_mb(),
        "weights_mb": weights / 2**20,
        "trainable": sum(p.numel() for p in trainable),
        "loss": loss,
        "load_s": load_s,
        "step_s": step_s,
    }
    if on_cuda:
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_mb"] = result["cuda_peak_mb"]
    else:
        result["peak_mb"] = result["rss_peak_mb"] - rss_before
    return result


def run_probe(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`probe` in a fresh ``python -m benchmarks.quantized_memory --probe`` process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    if spec.get("malloc_mmap_threshold"):  # glibc: allocations above this size always mmap'd, freed to the OS
        env["MALLOC_MMAP_THRESHOLD_"] = str(spec["malloc_mmap_threshold"])
    command = [sys.executable, "-m", "benchmarks.quantized_memory", "--probe", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"variant": spec["variant"], "error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"variant": spec["variant"], "error": f"exit {done.returncode}: {' | '.join(tail)[-600:]}"}


# --------------------------------------------------------------------------- the whole comparison


def goals(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals from the measured peaks (``N/A`` where a variant is missing or failed)."""
    from benchmarks.goals import Goal

    def ratio(a: str, b: str) -> float | None:
        x, y = variants.get(a, {}).get("peak_mb"), variants.get(b, {}).get("peak_mb")
        return round(x / y, 4) if x is not None and y else None

    return [
        Goal("8-bit / bf16 peak memory", ratio("8bit", "bf16"), "<=", 0.65).to_dict(),
        Goal("4-bit / bf16 peak memory", ratio("4bit", "bf16"), "<=", 0.5).to_dict(),
        Goal("8-bit / plain peft 8-bit recipe", ratio("8bit", "peft-8bit"), "<", 1.0).to_dict(),
        Goal("4-bit / plain peft 4-bit recipe", ratio("4bit", "peft-4bit"), "<", 1.0).to_dict(),
    ]


def run(
    device: str,
    dry: bool = False,
    variants: list[str] | None = None,
    checkpoint: str | None = None,
    checkpointing: bool = True,
    batch: int = 4,
    seq_len: int = 256,
    threads: int | None = None,
    jobs: int = 1,
    timeout: float = 1800.0,
    progress: Any = print,
    malloc_mmap_threshold: int | None = None,
) -> dict[str, Any]:
    """Measure every variant (one fresh process each, ``jobs`` at a time) and return the result dict."""
    from benchmarks.llama_shape import TINY, TINYLLAMA_1B, ensure_checkpoint, parameter_count
    from benchmarks.machine import describe_machine, load_average

    shape = TINY if dry else TINYLLAMA_1B
    if dry:
        batch, seq_len = 2, 32
    wanted = [v for v in (variants or VARIANTS) if device == "cpu" or v not in CPU_ONLY]
    path = ensure_checkpoint(shape, checkpoint, device)
    specs = [
        {
            "checkpoint": str(path),
            "variant": v,
            "device": device,
            "batch": batch,
            "seq_len": seq_len,
            "checkpointing": checkpointing,
            "r": 8,
            "seed": 0,
            "threads": threads,
            "malloc_mmap_threshold": malloc_mmap_threshold,
        }
        for v in wanted
    ]
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        result = run_probe(spec, timeout)
        shown = result.get("error") or f"peak {result['peak_mb']:.0f} MiB, step {result['step_s']:.1f} s"
        progress(f"[{time.perf_counter() - start:6.1f}s] {spec['variant']}: {shown}")
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for spec, result in zip(specs, pool.map(one, specs), strict=True):
            results[spec["variant"]] = result
    return {
        "benchmark": "quantized-memory",
        "preset": "dry" if dry else "full",
        "date": date.today().isoformat(),
        "machine": describe_machine(device),
        "load_average": load_average(),
        "model": {"shape": shape, "parameters": parameter_count(shape), "checkpoint_dtype": "bfloat16"},
        "step": {
            "batch": batch,
            "seq_len": seq_len,
            "lora": {"r": 8, "alpha": 16, "targets": TARGETS},
            "optimizer": "AdamW",
            "gradient_checkpointing": checkpointing,
        },
        "malloc_mmap_threshold": malloc_mmap_threshold,
        "memory": "cuda max_memory_allocated"
        if device.startswith("cuda")
        else "peak RSS (VmHWM) minus RSS before loading",
        "variants": results,
        "goals": goals(results),
        "elapsed_s": round(time.perf_counter() - start, 1),
    }


def render_markdown(result: dict[str, Any]) -> str:
    """A short Markdown table of the variants and the goals."""
    variants = result["variants"]
    base = variants.get("bf16", {}).get("peak_mb")
    step = result["step"]
    lines = [
        f"# Quantised-base memory: {result['machine']['slug']} ({result['machine'].get('gpu') or result['machine']['cpu_model']}), {result['date']}",
        "",
        f"Random Llama, {result['model']['parameters'] / 1e9:.2f}B parameters; one LoRA step, batch "
        f"{step['batch']}x{step['seq_len']}, gradient checkpointing {'on' if step['gradient_checkpointing'] else 'off'} "
        f"for every variant; memory: {result['memory']}"
        + (
            f" (glibc MALLOC_MMAP_THRESHOLD_={result['malloc_mmap_threshold']})."
            if result.get("malloc_mmap_threshold")
            else "."
        ),
        "",
        "| variant | peak MiB | / bf16 | weights MiB | load s | step s | loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        if "error" in v:
            lines.append(f"| {name} | error: {v['error'][:120]} | | | | | |")
            continue
        rel = f"{v['peak_mb'] / base:.3f}" if base else ""
        lines.append(
            f"| {name} | {v['peak_mb']:,.0f} | {rel} | {v['weights_mb']:,.0f} | {v['load_s']:.1f} | {v['step_s']:.1f} | {v['loss']:.3f} |"
        )
    lines += ["", "| goal | value | target | verdict |", "|---|---|---|---|"]
    for g in result["goals"]:
        value = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        lines.append(f"| {g['name']} | {value} | {g['op']} {g['target']:g} | {g['verdict']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quantized_memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dry", action="store_true", help="a tiny Llama and a 2x32 batch: seconds, for tests"
    )
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto' (default)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help=f"a subset of {', '.join(VARIANTS)}")
    parser.add_argument("--checkpoint", help="where the random checkpoint is (built there if absent)")
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="gradient checkpointing off on every side"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads per probe (default: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="probes run at once (default 1; CUDA: up to 4)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per probe")
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        help="glibc MALLOC_MMAP_THRESHOLD_ for the probes (e.g. 1048576: large buffers are returned to the OS "
        "when freed instead of fragmenting the heap); default: glibc's own dynamic threshold",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="result JSON path (default benchmarks/results/quantized-memory-<machine>-<date>.json)",
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one variant, as JSON
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, write the JSON (and a Markdown table next to it), print the goals."""
    args = parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.probe:
        spec = json.loads(args.probe)
        if spec.get("threads"):
            import torch

            torch.set_num_threads(int(spec["threads"]))
        print(MARKER + json.dumps(probe(spec)), flush=True)
        return 0
    import torch

    device = ("cuda:0" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    result = run(
        device,
        dry=args.dry,
        variants=args.variants,
        checkpoint=args.checkpoint,
        checkpointing=not args.no_checkpointing,
        threads=args.threads,
        jobs=args.jobs,
        timeout=args.timeout,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
        malloc_mmap_threshold=args.malloc_mmap_threshold,
    )
    suffix = ("-dry" if args.dry else "") + ("-mmap-threshold" if args.malloc_mmap_threshold else "")
    out = (
        args.out
        or RESULTS_DIR / f"quantized-memory-{result['machine']['slug']}-{result['date']}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(render_markdown(result))
    print(render_markdown(result))
    print(f"Results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
