"""Markdown table and plot of a quality results file (mean over seeds per task x method variant).

``python -m benchmarks.quality --report-only [--results FILE]`` redraws them without running cells.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.quality.grid import DEFAULT_METHODS, TASKS


def aggregate(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per ``(task, variant)``: the finished records' seeds, scores and mean costs."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in data["cells"].values():
        if record.get("status") == "ok" and record.get("score") is not None:
            groups[(record["task"], record["variant"])].append(record)
    # Percentages are of the base model (full fine-tuning's parameter count): a quantised base
    # counts its packed 4-bit weights as half as many parameters, and adapters add their own.
    totals: dict[str, int] = {}
    for (task, variant), records in groups.items():
        if variant == "full" and records[0].get("total_params"):
            totals[task] = records[0]["total_params"]
    rows = {}
    for key, records in groups.items():
        records.sort(key=lambda r: r["seed"])
        scores = [100 * r["score"] for r in records]
        valid = [100 * r["valid_score"] for r in records if r.get("valid_score") is not None]
        rows[key] = {
            "seeds": [r["seed"] for r in records],
            "scores": scores,
            "score": statistics.fmean(scores),
            "spread": (max(scores) - min(scores)) / 2 if len(scores) > 1 else None,
            "valid": statistics.fmean(valid) if valid else None,
            "trainable_params": records[0]["trainable_params"],
            "trainable_pct": (
                round(100 * records[0]["trainable_params"] / totals[key[0]], 3)
                if totals.get(key[0]) and records[0].get("trainable_params")
                else records[0]["trainable_pct"]
            ),
            "adapter_bytes": records[0]["adapter_bytes"],
            "cpu_seconds": statistics.fmean(r["cpu_seconds"] for r in records),
        }
    return rows


def _order(rows: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, str]]:
    tasks = [t for t in TASKS if any(k[0] == t for k in rows)]
    known = {name: i for i, name in enumerate(DEFAULT_METHODS)}
    return [
        k
        for t in tasks
        for k in sorted((k for k in rows if k[0] == t), key=lambda k: (known.get(k[1], len(known)), k[1]))
    ]


def _size_lines(data: dict[str, Any]) -> list[str]:
    if data.get("tiny"):
        return []
    if data.get("size", "budget") == "recipe":
        return ["Size: each recipe's default (all epochs over the whole training set).", ""]
    sizes = "; ".join(f"{task.label.split(',')[0]}: `{' '.join(task.budget)}`" for task in TASKS.values())
    return [f"Size: budget, each run with the recipe's defaults plus {sizes}.", ""]


def render_markdown(data: dict[str, Any], plot: str | None = None) -> str:
    """The results as a Markdown section: one row per task x method variant."""
    rows = aggregate(data)
    tiny = (
        " (--tiny: a tiny random BERT on synthetic data; the scores mean nothing)" if data.get("tiny") else ""
    )
    lines = [
        f"# Method quality grid{tiny}",
        "",
        "Each row: mean over seeds of one recipe run per seed (`python -m benchmarks.quality`); score in %,",
        "± half the range over seeds; CPU-seconds of the whole run (start-up and evaluation included).",
        "",
        *_size_lines(data),
        "| task | method | test score | valid | seeds | trainable params | adapter file | CPU-s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in _order(rows):
        row = rows[key]
        spread = f" ± {row['spread']:.2f}" if row["spread"] is not None else ""
        valid = f"{row['valid']:.2f}" if row["valid"] is not None else ""
        params = (
            f"{row['trainable_params']:,} ({row['trainable_pct']:.2f}%)" if row["trainable_params"] else ""
        )
        size = f"{row['adapter_bytes'] / 1e6:.1f} MB" if row["adapter_bytes"] else ""
        lines.append(
            f"| {TASKS[key[0]].label} | {key[1]} | {row['score']:.2f}{spread} | {valid} | "
            f"{', '.join(map(str, row['seeds']))} | {params} | {size} | {row['cpu_seconds']:,.0f} |"
        )
    failed = sorted(k for k, r in data["cells"].items() if r.get("status") != "ok")
    if failed:
        lines += ["", f"Failed cells (rerun to retry): {', '.join(failed)}."]
    if plot:
        lines += ["", f"![score against trainable parameters]({plot})"]
    return "\n".join(lines) + "\n"


def render_plot(data: dict[str, Any], path: Path) -> Path | None:
    """Score against trainable parameters (log scale), one panel per task; ``None`` if nothing to draw."""
    rows = aggregate(data)
    tasks = [t for t in TASKS if any(k[0] == t for k in rows)]
    if not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    # One colour and marker per method, the same in every panel, named once in a legend below
    # (labels next to the points overlap where methods score alike).
    variants = list(dict.fromkeys(variant for _, variant in _order(rows)))
    markers = "osD^vPX*<>ph"
    style = {v: (f"C{i % 10}", markers[i % len(markers)]) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for (row_task, variant), row in sorted(rows.items()):
            if row_task != task or not row["trainable_params"]:
                continue
            color, marker = style[variant]
            ax.errorbar(row["trainable_params"], row["score"], yerr=row["spread"] or 0, fmt=marker,
                        color=color, capsize=3, markersize=7, alpha=0.85, label=variant)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"test {TASKS[task].metric} (%)")
        ax.set_title(TASKS[task].label)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    ordered = [v for v in variants if v in handles]
    fig.legend([handles[v] for v in ordered], ordered, loc="lower center", ncol=min(len(ordered), 5),
               fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(data: dict[str, Any], results_path: Path) -> tuple[Path, Path | None]:
    """Write ``<results stem>.md`` and ``<results stem>.png`` next to the results file."""
    plot = render_plot(data, results_path.with_suffix(".png"))
    markdown = results_path.with_suffix(".md")
    markdown.write_text(render_markdown(data, plot.name if plot else None), encoding="utf-8")
    return markdown, plot
