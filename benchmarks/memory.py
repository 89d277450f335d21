"""Peak memory of a training run, one variant per fresh process.

Why a fresh process: the process-wide high-water mark (``ru_maxrss`` / ``VmHWM``) never goes
down, and memory freed by an earlier variant stays in the allocator's pools, so measuring
several variants in one process mixes their footprints. Each probe therefore runs in a new
process, forked from a ``forkserver`` that has already imported torch, transformers and peft
(saving the import time per probe; no torch work ran in it, so forking is safe). Standalone:
``python -m benchmarks.memory '<json>'``. A probe loads + wraps the model, then resets the
high-water mark (Linux: write ``5`` to ``/proc/self/clear_refs``) so the one-off peak of loading
(e.g. bitsandbytes quantising fp32 weights) is excluded, runs a few inference forwards and reads
``VmHWM`` (the inference peak), resets it again, runs a few training steps (the first allocates
the optimizer state, later ones reach the steady-state peak), and reads ``VmHWM``.
Where the reset is impossible the peak falls back to ``ru_maxrss`` (loading included) and says
so in ``peak_source``. On CUDA the probe also reports ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import resource
import sys
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MARKER = "BENCH_MEMORY_RESULT "


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    status = _proc_status()
    if "VmRSS" in status:
        return status["VmRSS"] / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); ``False`` if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size (``VmHWM``, else ``ru_maxrss``) of this process, in MiB."""
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"] / 1024
    scale = 1024**2 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one variant, train a few steps and return its memory figures (MiB).

    Args:
        spec: ``model_path``, ``precision``, ``method``, ``batch``, ``seq_len``, ``steps``,
            ``num_labels``, ``seed``, ``device``.

    Returns:
        ``rss_start_mb`` (before loading), ``rss_loaded_mb`` (model ready, every weight page
        resident: safetensors checkpoints are memory-mapped and would otherwise be paged in
        during the first step) split into anonymous and file-backed (mapped checkpoint, libraries)
        parts, ``infer_peak_rss_mb`` (high-water mark of a few inference forwards, run first),
        ``peak_rss_mb`` (high-water mark while training), ``train_extra_mb`` (peak minus loaded),
        ``peak_source`` and, on CUDA, ``cuda_peak_mb``.

    """
    from benchmarks.measure import Runner, make_batch
    from benchmarks.variants import build_variant, variant_name

    device = spec["device"]
    rss_start = current_rss_mb()
    model = build_variant(
        spec["model_path"], spec["precision"], spec["method"], spec["num_labels"], spec["seed"], device
    )
    runner = Runner(variant_name(spec["precision"], spec["method"]), model, device)
    batch = make_batch(
        spec["batch"], spec["seq_len"], model.config.vocab_size, spec["num_labels"], spec["seed"], device
    )
    _touch_parameters(model)
    rss_loaded = current_rss_mb()
    status = _proc_status()
    was_reset = reset_peak_rss()
    for _ in range(spec["steps"]):  # inference first: its peak is then not the leftovers of training
        runner.infer_step(batch)
    infer_peak = peak_rss_mb()
    was_reset = reset_peak_rss() and was_reset
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(spec["steps"]):
        runner.train_step(batch)
    peak = peak_rss_mb()
    result = {
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "rss_loaded_anon_mb": status["RssAnon"] / 1024 if "RssAnon" in status else None,
        "rss_loaded_file_mb": status["RssFile"] / 1024 if "RssFile" in status else None,
        "infer_peak_rss_mb": infer_peak,
        "peak_rss_mb": peak,
        "train_extra_mb": peak - rss_loaded,
        "peak_source": "VmHWM reset after loading" if was_reset else "ru_maxrss (includes loading)",
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
    }
    return result


def measure_peaks(
    specs: dict[str, dict[str, Any]], mode: str, jobs: int = 2, timeout: float = 900.0
) -> dict[str, dict[str, Any]]:
    """Memory figures of several variants.

    Args:
        specs: ``{variant name: probe spec}`` (see :func:`probe`).
        mode: ``"subprocess"`` (one fresh process per variant, ``jobs`` at a time; peaks are
            memory, not time, so running probes side by side does not distort them),
            ``"inprocess"`` (sequential in this process: only ``train_extra_mb`` is meaningful)
            or ``"off"``.
        jobs: Concurrent probe processes.
        timeout: Seconds before a probe is abandoned.

    Returns:
        ``{variant name: figures}``; a failed probe gives ``{"error": "..."}``.

    """
    if mode == "off":
        return {}
    if mode == "inprocess":
        results = {}
        for name, spec in specs.items():
            results[name] = {**probe(spec), "mode": "inprocess"}
        return results
    if mode != "subprocess":
        raise ValueError(f"memory mode {mode!r}: use 'subprocess', 'inprocess' or 'off'.")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks.memory", "benchmarks.variants", "benchmarks.measure"])
    results = {}
    with context.Pool(processes=max(1, jobs), maxtasksperchild=1) as pool:
        pending = {name: pool.apply_async(_probe_child, (spec,)) for name, spec in specs.items()}
        for name, task in pending.items():
            try:
                results[name] = {**task.get(timeout=timeout), "mode": "subprocess"}
            except multiprocessing.TimeoutError:
                results[name] = {"error": f"probe timed out after {timeout:.0f} s"}
            except Exception as exc:  # report the failure of one variant, keep the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def _probe_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`probe` in a pool worker (a fresh process forked from the preloaded fork server)."""
    import logging as _logging

    _logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
    return probe(spec)


def _touch_parameters(model: torch.nn.Module) -> None:
    """Fault in every page of every parameter, so memory-mapped checkpoint weights count as loaded."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel():
                flat = tensor.detach().reshape(-1)
                step = max(1, 4096 // tensor.element_size())
                flat[::step].float().sum()


def _proc_status() -> dict[str, int]:
    path = Path("/proc/self/status")
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0])  # kB
    return values


def main(argv: list[str] | None = None) -> int:
    """Probe entry point: ``python -m benchmarks.memory '<json spec>'`` prints one result line."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    print(MARKER + json.dumps(probe(spec)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
