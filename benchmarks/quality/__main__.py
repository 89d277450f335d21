"""``python -m benchmarks.quality``: run the unfinished cells of the grid, then write the report.

python -m benchmarks.quality                                   # the whole grid at budget size (~1 h on 2 cores)
python -m benchmarks.quality --recipe-size --results R.json    # at the recipes' own sizes (~15 CPU-hours)
python -m benchmarks.quality --methods lora full --tasks ner --seeds 42
python -m benchmarks.quality --list                            # cells and whether they are done
python -m benchmarks.quality --report-only                     # table + plot from the results file
python -m benchmarks.quality --tiny --results /tmp/q.json      # seconds per cell: a tiny random BERT
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quality.grid import DEFAULT_METHODS, DEFAULT_SEEDS, DEFAULT_TASKS, build_cells
from benchmarks.quality.report import write_report
from benchmarks.quality.results import finished, load_results, save_results
from benchmarks.quality.runner import REPO, RunSettings, command, run_cell
from peftkit.errors import ConfigError, PeftkitError

logger = logging.getLogger("benchmarks.quality")
RESULTS = REPO / "benchmarks" / "results" / "quality.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Resumable method x task x seed grid of recipe runs; results JSON, Markdown table and plot.",
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"method variants, NAME or NAME@int8 (default: {' '.join(DEFAULT_METHODS)})")  # fmt: skip
    parser.add_argument(
        "--tasks", nargs="+", default=list(DEFAULT_TASKS), help="ner, sentiment (default: both)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="default: 42 7")
    parser.add_argument("--results", type=Path, help=f"results JSON (default {RESULTS.relative_to(REPO)}; "
                        "--tiny: <work-dir>/quality.json)")  # fmt: skip
    parser.add_argument(
        "--work-dir", type=Path, help="recipe outputs (default runs/quality, --tiny: runs/quality-tiny)"
    )
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads per run"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random BERT and synthetic data (smoke test)"
    )
    parser.add_argument("--recipe-size", action="store_true",
                        help="train at each recipe's default size, not the task's budget size (see grid.py)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the cells and their state; run nothing")
    parser.add_argument("--report-only", action="store_true", help="write the table and plot; run nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the missing cells one after the other; returns 1 if any cell failed."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    work_dir = args.work_dir or REPO / ("runs/quality-tiny" if args.tiny else "runs/quality")
    results_path = args.results or (work_dir / "quality.json" if args.tiny else RESULTS)
    try:
        cells = build_cells(args.methods, args.tasks, args.seeds)
        data = load_results(results_path)
        if data["cells"] and bool(data.get("tiny")) != args.tiny:
            kind = "--tiny" if data.get("tiny") else "real"
            raise ConfigError(
                f"{results_path} holds {kind} cells: pass another --results for a {'real' if args.tiny else '--tiny'} run."
            )
        size = "recipe" if args.recipe_size else "budget"
        if data["cells"] and data.get("size", "budget") != size:
            raise ConfigError(
                f"{results_path} holds {data.get('size', 'budget')}-size cells: pass another --results for a "
                f"{size}-size run."
            )
    except PeftkitError as exc:
        print(f"benchmarks.quality: error: {exc}", file=sys.stderr)
        return 2
    extra = {}
    if args.tiny and not (args.list or args.report_only):
        from benchmarks.quality.tiny import tiny_args

        extra = tiny_args(work_dir / "tiny-data")
    settings = RunSettings(
        work_dir=work_dir, threads=args.threads, extra_args=extra, budget=not args.recipe_size
    )
    if args.list:
        for cell in cells:
            state = data["cells"].get(cell.key, {}).get("status", "todo")
            print(f"{cell.key:40s} {state:7s} {' '.join(command(cell, settings)[1:])}")
        return 0
    failures = 0
    if not args.report_only:
        todo = [cell for cell in cells if not finished(data, cell.key)]
        logger.info("%d cells: %d finished, %d to run; results in %s", len(cells), len(cells) - len(todo),
                    len(todo), results_path)  # fmt: skip
        for number, cell in enumerate(todo, start=1):
            logger.info("[%d/%d] %s", number, len(todo), cell.key)
            record = run_cell(cell, settings)
            data = load_results(results_path)  # another process may have added cells meanwhile
            data["cells"][cell.key] = record
            data["tiny"] = args.tiny
            data["size"] = "recipe" if args.recipe_size else "budget"
            save_results(results_path, data)
            if record["status"] == "ok":
                logger.info("%s: %s %.4f, %.0f CPU-s", cell.key, record["metric"], record["score"],
                            record["cpu_seconds"])  # fmt: skip
            else:
                failures += 1
                logger.error("%s failed:\n%s", cell.key, record.get("error", ""))
    markdown, plot = write_report(data, results_path)
    logger.info("Wrote %s%s", markdown, f" and {plot}" if plot else "")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
