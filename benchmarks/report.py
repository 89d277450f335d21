"""Render a result dict as a Markdown page (``latest.md``) and PNG plots (matplotlib, Agg backend).

``python -m benchmarks.report results/<file>.json`` re-renders a saved result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.goals import goal_from_dict
from benchmarks.stats import stat_from_dict

METHOD_LABELS = {
    "full": "full fine-tuning",
    "lora": "LoRA (peftkit)",
    "adalora": "AdaLoRA (peftkit)",
    "adapter": "Adapter (peftkit)",
    "peft-lora": "LoRA (peft directly)",
    "parallel": "Parallel adapter (peftkit)",
}


def render_markdown(result: dict[str, Any], plots: dict[str, str]) -> str:
    """The Markdown page: machine, goals, training, inference, memory/size tables, method notes."""
    m = result["machine"]
    v = m["versions"]
    model = result["model"]
    shapes = result["shapes"]
    labels = [f"{s['batch']}x{s['seq_len']}" for s in shapes]
    settings = result["settings"]
    load = result.get("load_average", {})
    lines = [
        f"# peftkit benchmarks: {m['slug']}, {result['date']} ({result['preset']} run)",
        "",
        f"**Machine:** {m['cpu_model']}, {m['cores']} cores ({m['torch_threads']} torch threads, "
        f"{', '.join(m['cpu_flags']) or 'no AVX'}), {m['memory_gb']} GB RAM"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f"; {m['os']}.  ",
        f"**Software:** Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
        f"peft {v['peft']}, bitsandbytes {v['bitsandbytes']}, accelerate {v['accelerate']}.  ",
        f"**Model:** {model['label']} ({model.get('model_type', '?')}, {model.get('layers', '?')} layers, hidden "
        f"{model.get('hidden', '?')}, {model.get('params', 0):,} parameters) with a {settings['num_labels']}-label "
        f"token-classification head; batches (sequences x tokens): {', '.join(labels)}.  ",
        f"**Method:** {settings['repeats']} interleaved rounds (every variant once per round, rotating start) "
        f"x {settings['steps_per_repeat']} step(s) per sample after {settings['warmup']} warm-up step(s); "
        "numbers are **median [interquartile range]** over rounds. "
        f"Load average (1/5/15 min) at start {load.get('start')}, end {load.get('end')}; "
        f"run took {result.get('elapsed_s', 0) / 60:.1f} min.",
        "",
        "## Goals",
        "",
        "| goal | measured | target | verdict | how |",
        "|---|---|---|---|---|",
    ]
    for data in result.get("goals", []):
        goal = goal_from_dict(data)
        value = "n/a" if goal.value is None else f"{goal.value:.3f} {goal.spread}".strip()
        mark = {"PASS": "**PASS**", "FAIL": "**FAIL**"}.get(goal.verdict, goal.verdict)
        lines.append(f"| {goal.name} | {value} | {goal.op} {goal.target:g} | {mark} | {goal.note} |")

    lines += _step_speed_section(result)
    lines += ["", "## Training (forward + backward + optimizer step)", ""]
    lines += _training_table(result, labels)
    lines += ["", "## Inference (eval mode, no autograd)", ""]
    lines += _inference_table(result, labels)
    lines += _int8_section(result)
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({name})" for title, name in plots.items()]
    lines += ["", "## How these numbers are measured", ""] + _notes(result)
    return "\n".join(lines) + "\n"


def _training_table(result: dict[str, Any], labels: list[str]) -> list[str]:
    base_bytes = result["model"]["base_checkpoint_bytes"]
    header = ["variant", "trainable params"]
    header += [f"tokens/s {label}" for label in labels] + [f"MFU {label}" for label in labels]
    header += ["peak RSS MiB (training / inference)", "adapter file"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = list(result["shapes"][0]["train"]) if result["shapes"] else []
    for name in names:
        info = result["variants"].get(name, {})
        cells = [
            _variant_label(name),
            f"{info.get('trainable', 0):,} ({_pct(info.get('trainable'), info.get('total'))})",
        ]
        for shape in result["shapes"]:
            cells.append(stat_from_dict(shape["train"][name]["tokens_per_s"]).fmt(0))
        for shape in result["shapes"]:
            mfu = shape["train"][name].get("mfu")
            cells.append(stat_from_dict(mfu).fmt(1, 100) + " %" if mfu else "n/a")
        memory = info.get("memory") or {}
        peaks = [f"{memory[key]:,.0f}" for key in ("peak_rss_mb", "infer_peak_rss_mb") if memory.get(key)]
        cells.append(" / ".join(peaks) if peaks else memory.get("error", "n/a"))
        adapter = info.get("adapter_file") or {}
        size = adapter.get("weights_bytes")
        cells.append(f"{_bytes(size)} ({_pct(size, base_bytes, 2)} of base)" if size else "n/a")
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(
        "| int8 full fine-tuning | n/a: int8 weights cannot carry gradients |" + " |" * (len(header) - 2)
    )
    return rows


def _step_speed_section(result: dict[str, Any]) -> list[str]:
    """The recipe-shape step speed of each method and its ratios (``benchmarks/step_speed.py``)."""
    speed = result.get("step_speed")
    if not speed:
        return []
    options = speed["lora_options"]
    lines = [
        "",
        f"## Training step at the NER recipe's shape ({speed['batch']}x{speed['seq_len']} tokens, "
        f"{speed['dtype']}, {speed['threads']} thread(s))",
        "",
        f"LoRA r {options['r']}, alpha {options['alpha']:g}, dropout {options['dropout']:g} on "
        f"{', '.join(speed['targets'])} (peftkit and plain peft alike); AdaLoRA on the same targets; "
        f"adapters with their defaults. Every step clips gradients and runs AdamW, as the recipes do. "
        f"{speed['rounds']} rounds, one step of every variant per round (rotating start).",
        "",
        "| variant | tokens/s (wall) | CPU ms per step |",
        "|---|---|---|",
    ]
    for name, entry in speed["variants"].items():
        lines.append(
            f"| {METHOD_LABELS.get(name, name)} | {stat_from_dict(entry['tokens_per_s']).fmt(0)} | "
            f"{stat_from_dict(entry['cpu_ms']).fmt(1)} |"
        )
    lines += ["", "| tokens/s ratio (paired per round) | wall time | CPU time |", "|---|---|---|"]
    for key, ratio in speed["ratios"].items():
        lines.append(
            f"| {key} | {stat_from_dict(ratio['wall']).fmt(3)} | {stat_from_dict(ratio['cpu']).fmt(3)} |"
        )
    return lines


def _inference_table(result: dict[str, Any], labels: list[str]) -> list[str]:
    header = (
        ["variant"] + [f"tokens/s {label}" for label in labels] + [f"vs fp32 {label}" for label in labels]
    )
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = list(result["shapes"][0]["infer"]) if result["shapes"] else []
    for name in names:
        cells = ["fp32 base model (as full fine-tuning)" if name == "fp32-full" else _variant_label(name)]
        ratios = []
        for shape in result["shapes"]:
            stat = stat_from_dict(shape["infer"][name]["tokens_per_s"])
            cells.append(stat.fmt(0))
            reference = shape["infer"].get("fp32-full")
            ratios.append(f"{stat.median / reference['tokens_per_s']['median']:.2f}x" if reference else "n/a")
        rows.append("| " + " | ".join(cells + ratios) + " |")
    return rows


def _int8_section(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## 8-bit inference: peftkit's fast int8 path vs fp32 and bitsandbytes (`benchmarks/int8_speed.py`)",
        "",
        "| batch | fp32 tokens/s | int8 fast tokens/s | int8 bitsandbytes tokens/s | fast / fp32 speed "
        "| bitsandbytes / fp32 speed | max abs logit error (fast) | argmax agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in result["shapes"]:
        speed = shape.get("int8_speed") or {}
        label = f"{shape['batch']}x{shape['seq_len']}"
        if "speedup" not in speed:
            lines.append(f"| {label} | {speed.get('error', 'not measured')} |" + " |" * 6)
            continue
        spread = (
            f" [{speed['speedup_q1']:.2f}-{speed['speedup_q3']:.2f}]" if speed.get("repeats", 1) > 1 else ""
        )
        lines.append(
            f"| {label} | {speed['fp32_tokens_per_s']:,.0f} | {speed['int8_fast_tokens_per_s']:,.0f} | "
            f"{speed.get('int8_bnb_tokens_per_s', float('nan')):,.0f} | {speed['speedup']:.2f}x{spread} | "
            f"{speed.get('bnb_speedup', float('nan')):.2f}x | {speed.get('max_abs_logit_err_fast', float('nan')):.3g} | "
            f"{100 * speed.get('argmax_agreement_fast', float('nan')):.1f} % |"
        )
    int8 = result.get("int8_linear") or {}
    if int8.get("layers"):
        lines.append("")
        lines.append(
            f"Quantised linear layers: {int8['layers']}, weights {_bytes(int8['quantized_bytes'])} in 8-bit "
            f"(codes + row scales) vs {_bytes(int8['fp32_bytes'])} in fp32 ({int8['ratio']:.3f}x)."
        )
        if int8.get("packed_bytes"):
            resident = int8["quantized_bytes"] + int8["packed_bytes"]
            lines[-1] += (
                f" The fast CPU path adds one packed int8 copy per layer ({_bytes(int8['packed_bytes'])}), so "
                f"{_bytes(resident)} are resident while it is enabled ({resident / int8['fp32_bytes']:.3f}x fp32); "
                "`peftkit.enable_fast_int8(model, enabled=False)` frees it."
            )
    lines += _rss_comparison(result)
    return lines


def _rss_comparison(result: dict[str, Any]) -> list[str]:
    """One sentence per method: 8-bit vs fp32 peak RSS of inference and of training."""
    memory = {name: info.get("memory") or {} for name, info in result["variants"].items()}
    parts = []
    for name, figures in memory.items():
        reference = memory.get(name.replace("int8-", "fp32-", 1)) if name.startswith("int8-") else None
        if not reference or "peak_rss_mb" not in figures or "peak_rss_mb" not in reference:
            continue
        infer = ""
        if figures.get("infer_peak_rss_mb") and reference.get("infer_peak_rss_mb"):
            infer = (
                f"inference {figures['infer_peak_rss_mb']:,.0f} vs {reference['infer_peak_rss_mb']:,.0f} MiB "
                f"({figures['infer_peak_rss_mb'] / reference['infer_peak_rss_mb']:.2f}x), "
            )
        parts.append(
            f"{_variant_label(name)}: {infer}training {figures['peak_rss_mb']:,.0f} vs "
            f"{reference['peak_rss_mb']:,.0f} MiB ({figures['peak_rss_mb'] / reference['peak_rss_mb']:.2f}x)"
        )
    if not parts:
        return []
    return ["", "Peak RSS, 8-bit vs fp32 base (fresh process per variant): " + "; ".join(parts) + "."]


def _notes(result: dict[str, Any]) -> list[str]:
    peak = result.get("gemm_peak", {})
    return [
        "* **Interleaving:** all variants live in one process; each round runs every variant once "
        "(the start rotates), so load from other processes hits them alike. Ratios such as "
        "peftkit/peft are computed per round (paired) and then summarised.",
        "* **Training step:** `model(**batch).loss.backward()`, `AdamW.step()`, "
        "`peftkit.on_optimizer_step` (AdaLoRA's budget schedule), `zero_grad`. Synthetic batches: random "
        "word-piece ids, all positions attended, random tags.",
        "* **peft reference:** `peft.get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, "
        "target_modules=['query', 'value'], modules_to_save=['classifier']))`, the same LoRA as "
        "`peftkit.wrap(model, 'lora', r=8, alpha=16, target_modules=['query', 'value'])`.",
        "* **Peak RSS:** one fresh process per variant: load + wrap, reset the kernel's high-water mark "
        "(`/proc/self/clear_refs`), run a few inference forwards, read `VmHWM` (inference), reset it again, "
        "run a few training steps, read `VmHWM` (training). It includes the Python/torch "
        "runtime and the model, not the one-off peak of loading. Peak CUDA memory "
        "(`torch.cuda.max_memory_allocated`) is reported on GPUs only.",
        f"* **MFU:** FLOPs of forward + backward counted with `torch.utils.flop_counter.FlopCounterMode` "
        "(PEFT steps compute no weight gradients for frozen weights: ~4x forward instead of 6x), divided by "
        f"the step time and by the best fp32 GEMM rate of this machine: {peak.get('best_flops', 0) / 1e9:.1f} "
        f"GFLOP/s (`torch.mm` {peak.get('size')}x{peak.get('size')}, {peak.get('threads')} threads). 8-bit "
        "variants use the FLOPs of the same fp32 method (nominal).",
        "* **8-bit variants:** loaded with `peftkit.quantization.load_base(..., load_in_8bit=True)` (heads "
        "in fp32). On CPU, training and inference forwards take peftkit's fast int8 path (the training "
        "backward multiplies by the dequantised weight, as bitsandbytes does), so the tables show it under "
        "LoRA/AdaLoRA/Adapter. bitsandbytes' own eval path is in the 8-bit section.",
        "* **Adapter file:** `peftkit.save_adapter` (weights: `adapter_model.safetensors`, includes the "
        "trained head); full fine-tuning stores every parameter.",
    ]


def render_plots(result: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    """Write the PNG plots next to the results and return ``{title: file name}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    for kind, title in (("train", "Training throughput"), ("infer", "Inference throughput")):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        _grouped_bars(ax, result, kind)
        ax.set_title(f"{title} (tokens/s, median and IQR) - {result['machine']['slug']}")
        fig.tight_layout()
        name = f"{stem}-{kind}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        plots[title] = name
    memory = {n: (v.get("memory") or {}) for n, v in result["variants"].items()}
    memory = {n: m for n, m in memory.items() if "peak_rss_mb" in m}
    if memory:
        fig, ax = plt.subplots(figsize=(9, 4))
        names = list(memory)
        loaded = [memory[n]["rss_loaded_mb"] for n in names]
        extra = [max(0.0, memory[n]["peak_rss_mb"] - memory[n]["rss_loaded_mb"]) for n in names]
        ax.bar(names, loaded, label="model loaded")
        ax.bar(names, extra, bottom=loaded, label="extra while training")
        ax.set_ylabel("MiB")
        ax.set_title("Peak RSS of a training run (fresh process per variant)")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        name = f"{stem}-memory.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        plots["Peak memory"] = name
    return plots


def _grouped_bars(ax: Any, result: dict[str, Any], kind: str) -> None:
    shapes = result["shapes"]
    names = list(shapes[0][kind]) if shapes else []
    width = 0.8 / max(1, len(shapes))
    for index, shape in enumerate(shapes):
        stats = [stat_from_dict(shape[kind][n]["tokens_per_s"]) for n in names]
        positions = [i + index * width for i in range(len(names))]
        errors = [[s.median - s.q1 for s in stats], [s.q3 - s.median for s in stats]]
        ax.bar(
            positions,
            [s.median for s in stats],
            width,
            yerr=errors,
            capsize=3,
            label=f"{shape['batch']}x{shape['seq_len']}",
        )
    ax.set_xticks([i + width * (len(shapes) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("tokens/s")
    ax.legend(title="batch x seq")


def _variant_label(name: str) -> str:
    precision, _, method = name.partition("-")
    return f"{precision} {METHOD_LABELS.get(method, method)}"


def _pct(part: float | None, whole: float | None, digits: int = 2) -> str:
    if not part or not whole:
        return "n/a"
    return f"{100 * part / whole:.{digits}f} %"


def _bytes(count: float | None) -> str:
    if count is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    return str(count)


def main(argv: list[str] | None = None) -> int:
    """Re-render ``latest.md`` and plots from a saved JSON result: ``python -m benchmarks.report FILE``."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0])
    result = json.loads(path.read_text())
    plots = render_plots(result, path.parent, path.stem)
    (path.parent / "latest.md").write_text(render_markdown(result, plots))
    print(path.parent / "latest.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
