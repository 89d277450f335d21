"""Smoke test of the benchmark suite: ``--quick --dry`` on a tiny random BERT (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.goals import Goal
from benchmarks.machine import int8_tier
from benchmarks.run import main
from benchmarks.stats import summarize


def test_dry_run_writes_json_markdown_and_plots(tmp_path, capsys):
    assert main(["--quick", "--dry", "--out", str(tmp_path)]) == 0

    [json_file] = tmp_path.glob("*-dry.json")
    result = json.loads(json_file.read_text())
    assert result["preset"] == "dry"
    assert {"cpu_model", "cores", "versions", "slug"} <= set(result["machine"])
    shape = result["shapes"][0]
    expected = {
        "fp32-full",
        "fp32-lora",
        "fp32-adalora",
        "fp32-adapter",
        "int8-lora",
        "int8-adalora",
        "int8-adapter",
        "fp32-peft-lora",
    }
    assert set(shape["train"]) == expected
    assert set(shape["infer"]) == expected
    for entry in shape["train"].values():
        assert entry["tokens_per_s"]["median"] > 0
        assert len(entry["seconds"]) == result["settings"]["repeats"]
    assert shape["train"]["fp32-lora"]["flops_per_step"] < shape["train"]["fp32-full"]["flops_per_step"]
    assert result["variants"]["fp32-lora"]["trainable"] < result["variants"]["fp32-full"]["trainable"]
    assert result["variants"]["fp32-lora"]["adapter_file"]["weights_bytes"] > 0
    assert result["variants"]["fp32-lora"]["memory"]["peak_rss_mb"] > 0
    assert result["variants"]["int8-lora"]["memory"]["infer_peak_rss_mb"] > 0
    assert 0 < result["int8_linear"]["ratio"] < 1
    assert {g["verdict"] for g in result["goals"]} <= {"PASS", "FAIL", "N/A"}
    speed = result["step_speed"]
    assert set(speed["variants"]) == {
        "full",
        "frozen",
        "lora",
        "peft-lora",
        "adalora",
        "adapter",
        "pfeiffer",
        "parallel",
    }
    wanted = {"lora/full", "lora/peft-lora", "adalora/full", "adapter/full", "pfeiffer/full", "parallel/full"}
    assert wanted <= set(speed["ratios"])
    for ratio in speed["ratios"].values():
        assert ratio["wall"]["n"] == ratio["cpu"]["n"] == result["settings"]["step_speed_rounds"]
    step_goals = [g for g in result["goals"] if "full fine-tuning, tokens/s" in g["name"]]
    assert len(step_goals) == 5 and all(g["value"] > 0 for g in step_goals)

    assert not (tmp_path / "latest.md").exists(), "a dry run must not replace the full run's page"
    markdown = (tmp_path / "latest-dry.md").read_text()
    assert "## Goals" in markdown and result["machine"]["cpu_model"] in markdown
    assert "Training step at the NER recipe's shape" in markdown
    assert "Peak RSS, 8-bit vs fp32 base" in markdown and "packed int8 copy" in markdown
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 3 and all(p.startswith(json_file.stem) for p in pngs)
    assert "Goals:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "op", "target", "verdict"),
    [
        (1.01, "<=", 1.02, "PASS"),
        (1.03, "<=", 1.02, "FAIL"),
        (1.6, ">=", 1.5, "PASS"),
        (None, "<", 1.0, "N/A"),
    ],
)
def test_goal_verdicts(value, op, target, verdict):
    assert Goal("g", value, op, target).verdict == verdict


def test_summarize_quartiles():
    stat = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stat.median, stat.q1, stat.q3, stat.min, stat.max, stat.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)


@pytest.mark.parametrize(
    ("flags", "tier"),
    [
        (["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"], "amx"),
        (["avx2", "fma", "avx512f", "avx512_vnni"], "vnni"),
        (["avx2", "fma", "avx_vnni"], "vnni"),
        (["avx2", "fma", "avx512f", "avx512bw"], "avx512"),
        (["avx2", "fma"], "avx2"),
        ([], ""),
    ],
)
def test_machine_label_names_the_int8_tier(flags: list[str], tier: str) -> None:
    assert int8_tier(flags) == tier


def test_quantized_memory_dry_run_measures_each_variant_in_its_own_process(tmp_path):
    from benchmarks.run import main as bench_main

    out = tmp_path / "qm.json"
    argv = [
        "quantized-memory",
        "--dry",
        "--variants",
        "bf16",
        "4bit",
        "--jobs",
        "2",
    ]  # peft's: in the gpu test
    assert bench_main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"bf16", "4bit"}
    for name, variant in result["variants"].items():
        assert "error" not in variant, (name, variant)
        assert variant["peak_mb"] > 0 and variant["rss_before_mb"] > 0 and variant["trainable"] > 0
    weights = {n: v["weights_mb"] for n, v in result["variants"].items()}
    assert weights["4bit"] < weights["bf16"]  # the 4-bit base holds less than the bf16 one
    assert [g["name"] for g in result["goals"]][:2] == [
        "8-bit / bf16 peak memory",
        "4-bit / bf16 peak memory",
    ]
    assert {g["verdict"] for g in result["goals"]} <= {"PASS", "FAIL", "N/A"}
    assert "| 4bit |" in out.with_suffix(".md").read_text()


def test_gpu_benchmark_dry_run_writes_its_two_result_files(tmp_path):
    from benchmarks.gpu import main as gpu_main

    assert gpu_main(["--dry", "--skip-memory", "--budget", "3600", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-bench.json", "gpu-bench.md"]
    result = json.loads((tmp_path / "gpu-bench.json").read_text())
    speed = result["speed"]
    assert not speed["errors"], speed["errors"]
    assert set(speed["speed_vs_bf16"]) == {"bf16", "8bit", "4bit", "peft-8bit"}
    assert speed["speed_vs_bf16"]["bf16"] == {"train": 1.0, "infer": 1.0}
    assert "## Speed" in (tmp_path / "gpu-bench.md").read_text()
    steps = result["method_steps"]
    assert "error" not in steps, steps.get("error")
    assert {"lora/full", "lora/peft-lora", "adalora/full", "adapter/full"} <= set(steps["ratios"])
    assert all(r > 0 for r in steps["ratios"].values()) and steps["dtype"] == "bfloat16"
    assert {g["verdict"] for g in steps["goals"]} <= {"PASS", "FAIL"}
    assert "## Method step speed" in (tmp_path / "gpu-bench.md").read_text()


def test_the_random_llama_has_tinyllamas_parameter_count():
    from benchmarks.llama_shape import TINY, TINYLLAMA_1B, build_random_llama, parameter_count

    assert parameter_count(TINYLLAMA_1B) == 1_100_048_384
    from benchmarks.llama_shape import LLAMA_05B

    assert 0.45e9 < parameter_count(LLAMA_05B) < 0.5e9  # the GPU check's "0.5B Llama"
    model = build_random_llama(TINY)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(TINY)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(model.model.rotary_emb.inv_freq).all()  # rebuilt after to_empty
