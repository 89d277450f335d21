"""``python -m benchmarks.quality``: the grid's cells, and resumability on a tiny grid (never the real one)."""

from __future__ import annotations

import json

import pytest

from benchmarks.quality.__main__ import main
from benchmarks.quality.grid import TASKS, build_cells, method_args
from benchmarks.quality.report import render_markdown
from peftkit.errors import ConfigError


def test_cells_cover_methods_tasks_bases_and_seeds():
    cells = build_cells(["lora", "lora@int8", "adapter-pfeiffer"], ["ner", "sentiment"], [42, 7])
    assert len(cells) == 12 and len({c.key for c in cells}) == 12
    assert cells[1].key == "ner/lora/int8/seed42" and cells[1].variant == "lora@int8"
    pfeiffer = method_args("adapter-pfeiffer", TASKS["sentiment"])
    assert pfeiffer[:2] == ["--method", "adapter"] and "placement: pfeiffer" in pfeiffer[-1]
    assert "head_modules: [classifier, bert.pooler]" in pfeiffer[-1]
    with pytest.raises(ConfigError, match="Unknown method 'dora2'"):
        build_cells(["dora2"], ["ner"], [1])
    with pytest.raises(ConfigError, match="Unknown base 'int3'"):
        build_cells(["lora@int3"], ["ner"], [1])


def test_budget_size_is_the_default_and_sets_adalora_schedule(tmp_path):
    from benchmarks.quality.grid import Cell
    from benchmarks.quality.runner import RunSettings, command

    cell = Cell("ner", "adalora", "int4", 42)
    budget = command(cell, RunSettings(work_dir=tmp_path))
    recipe = command(cell, RunSettings(work_dir=tmp_path, budget=False))
    assert (
        "--load-in-4bit" in budget and "--max-train-samples" in budget and "--max-train-samples" not in recipe
    )
    assert "tinit: 15," in " ".join(budget) and "tinit: 351," in " ".join(recipe)
    dora = method_args("dora", TASKS["ner"])
    assert dora[:2] == ["--method", "dora"] and "--target-modules" in dora


def test_markdown_averages_seeds():
    record = {"status": "ok", "task": "ner", "variant": "lora", "trainable_params": 10, "trainable_pct": 1.0,
              "adapter_bytes": 2e6, "cpu_seconds": 100.0, "valid_score": 0.9}  # fmt: skip
    data = {"cells": {"a": {**record, "seed": 1, "score": 0.80}, "b": {**record, "seed": 2, "score": 0.84}}}
    row = [line for line in render_markdown(data).splitlines() if "| lora |" in line]
    assert row == [
        "| CoNLL-2003 NER, test entity F1 | lora | 82.00 ± 2.00 | 90.00 | 1, 2 | 10 (1.00%) | 2.0 MB | 100 |"
    ]


@pytest.mark.slow
def test_tiny_grid_runs_each_cell_once_and_resumes(tmp_path):
    pytest.importorskip("matplotlib")
    results, work = tmp_path / "quality.json", tmp_path / "work"
    args = ["--tiny", "--results", str(results), "--work-dir", str(work), "--threads", "1",
            "--methods", "lora", "full", "--tasks", "ner", "--seeds", "3"]  # fmt: skip
    assert main(args) == 0
    cells = json.loads(results.read_text())["cells"]
    assert sorted(cells) == ["ner/full/fp32/seed3", "ner/lora/fp32/seed3"]
    lora, full = cells["ner/lora/fp32/seed3"], cells["ner/full/fp32/seed3"]
    for record in (lora, full):
        assert record["status"] == "ok" and 0 <= record["score"] <= 1 and record["cpu_seconds"] > 0
        assert record["adapter_bytes"] > 0 and record["global_step"] == 8  # 2 epochs of 32 sentences / 8
    assert lora["trainable_params"] < full["trainable_params"] == full["total_params"]
    assert "--seed 3" in lora["command"] and "--method lora" in lora["command"]
    assert results.with_suffix(".md").is_file() and results.with_suffix(".png").stat().st_size > 0

    # A rerun runs nothing: finished cells are skipped (their records, dates included, are unchanged).
    assert main(args) == 0
    assert json.loads(results.read_text())["cells"] == cells

    # An interrupted grid (here: one record lost, one failed) reruns exactly the missing cells.
    data = json.loads(results.read_text())
    del data["cells"]["ner/full/fp32/seed3"]
    data["cells"]["ner/lora/fp32/seed3"]["status"] = "failed"
    results.write_text(json.dumps(data))
    assert main([*args, "--methods", "lora", "full", "adapter-houlsby"]) == 0
    again = json.loads(results.read_text())["cells"]
    assert sorted(again) == ["ner/adapter-houlsby/fp32/seed3", "ner/full/fp32/seed3", "ner/lora/fp32/seed3"]
    assert again["ner/lora/fp32/seed3"]["status"] == "ok"
    assert again["ner/lora/fp32/seed3"]["date"] >= lora["date"]
    assert again["ner/lora/fp32/seed3"]["score"] == lora["score"]  # the same run, seeded

    assert main(["--tiny", "--results", str(results), "--list", "--tasks", "ner", "--seeds", "3"]) == 0
    with pytest.raises(SystemExit):
        main(["--results", str(results), "--methods"])  # argparse usage error
    assert main(["--results", str(results), "--report-only"]) == 2  # tiny cells never mix with real ones
