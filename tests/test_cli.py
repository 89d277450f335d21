"""The ``peftkit`` command line: real subprocesses for merge, in-process ``main()`` for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch.testing import assert_close

import peftkit
from peftkit.cli import main
from peftkit.io import load_adapter, read_adapter_dir
from peftkit.registry import register_method, unregister_method
from tests.test_merge import Artefacts, logits
from tests.tiny_models import make_model

COMMANDS = ("merge", "combine", "inspect", "methods")


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    return Artefacts(tmp_path_factory.mktemp("cli"))


def start_cli(*args: str, console_script: bool = False) -> subprocess.Popen[str]:
    """Start ``peftkit ARGS`` (console script) or ``python -m peftkit.cli ARGS`` in a real subprocess."""
    script = Path(sys.executable).with_name("peftkit")
    command = [str(script)] if console_script and script.exists() else [sys.executable, "-m", "peftkit.cli"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.fixture(scope="module")
def subprocess_runs(art, tmp_path_factory):
    """The real-subprocess runs, started together (each pays the torch/peft import once, in parallel)."""
    runs = {}
    for name, family, method, base_family in (
        ("gpt2-lora", "gpt2", "lora", "gpt2"),
        ("bert-adalora", "bert", "adalora", "bert"),
        ("bottleneck", "bert", "adapter", "bert"),
        ("wrong-base", "gpt2", "lora", "bert"),
    ):
        directory = tmp_path_factory.mktemp(f"cli-{name}")
        adapter, expected = art.adapter(family, method)
        argv = ["merge", "--base", str(art.base(base_family)), "--adapter", str(adapter)]
        process = start_cli(*argv, "--out", str(directory / "merged"), console_script=name == "gpt2-lora")
        runs[name] = (process, directory, adapter, expected)
    results = {}
    for name, (process, directory, adapter, expected) in runs.items():
        stdout, stderr = process.communicate(timeout=600)
        results[name] = (process.returncode, stdout, stderr, directory, adapter, expected)
    return results


@pytest.mark.slow  # four fresh interpreters importing torch/transformers/peft: ~20 s on 2 idle cores
@pytest.mark.parametrize(("run", "auto_class"), [("gpt2-lora", "Sequence"), ("bert-adalora", "Token")])
def test_merge_subprocess_writes_a_plain_transformers_model(subprocess_runs, run: str, auto_class: str):
    returncode, stdout, stderr, directory, _, expected = subprocess_runs[run]
    assert returncode == 0, stderr
    assert "max abs logit diff fp32" in stdout
    # bitsandbytes' optional 4-bit kernel (fetched through `kernels`) is no concern of an 8-bit library
    assert "publisher trust check" not in stderr and "gemm_4bit_forward" not in stderr, stderr
    auto = getattr(transformers, f"AutoModelFor{auto_class}Classification")
    plain = auto.from_pretrained(directory / "merged")
    assert_close(logits(plain, run.split("-")[0]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bottleneck_merge_says_it_cannot_fold_and_saves_the_head(subprocess_runs):
    returncode, stdout, stderr, directory, adapter, expected = subprocess_runs["bottleneck"]
    assert returncode == 0, stderr
    assert "peftkit merge: warning:" in stderr and "cannot be merged" in stderr
    assert "load_adapter" in stderr and "peftkit combine" in stderr and "Traceback" not in stderr
    assert "NOT merged" in stdout
    plain = transformers.AutoModelForTokenClassification.from_pretrained(directory / "merged")
    head = read_adapter_dir(adapter).tensors["base_model.model.classifier.weight"]
    assert_close(plain.classifier.weight, head)
    assert_close(logits(load_adapter(plain, adapter), "bert"), expected)


@pytest.mark.slow
def test_failing_subprocess_exits_1_with_the_message_and_leaves_nothing(subprocess_runs):
    returncode, _, stderr, directory, _, _ = subprocess_runs["wrong-base"]
    assert returncode == 1
    assert "peftkit merge: error:" in stderr and "trained on" in stderr
    assert "Traceback" not in stderr
    assert list(directory.iterdir()) == []


# --------------------------------------------------------------------------- help and usage errors


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: peftkit {command}" in out and "examples:" in out and f"peftkit {command}" in out


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["combine", "a", "b", "--out", "o", "--how", "nope"], "invalid choice"),
        (["combine", "a", "b", "--out", "o", "--weights", "1"], "--weights has 1 values for 2 adapters"),
        (["combine", "a", "--out", "o"], "at least two"),
        (["merge", "--base", "b", "--adapter", "a"], "--out"),
        (["merge", "--base", "b", "--adapter", "a", "--out", "o", "--dtype", "int8"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- commands in-process


def test_methods_json_lists_builtins_and_plugins(capsys):
    register_method("cli_probe", builder=lambda *args: None, source="probe-plugin", description="A probe.")
    try:
        assert main(["methods", "--json"]) == 0
        rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["methods"]}
        assert main(["methods"]) == 0
        table = capsys.readouterr().out
    finally:
        unregister_method("cli_probe")
    assert rows["lora"]["mergeable"] is True and rows["adalora"]["mergeable"] is True
    assert rows["adapter"]["mergeable"] is False and rows["adapter"]["peft_type"] == "ADAPTER"
    assert rows["cli_probe"] == {
        "name": "cli_probe",
        "source": "probe-plugin",
        "targets": "attention",
        "identity": True,
        "mergeable": False,
        "combine": "average",
        "peft": False,
        "peft_type": "CLI_PROBE",
        "description": "A probe.",
    }
    assert rows["prefix"]["targets"] == "none" and rows["prefix"]["identity"] is False
    assert rows["dora"]["combine"] == "no" and rows["lora"]["combine"] == "low-rank"
    assert rows["ia3"]["peft"] is True and rows["parallel"]["peft"] is False
    assert rows["adapter"]["targets"] == "attention_output+ffn_output"
    assert "cli_probe" in table and "probe-plugin" in table and "COMBINE" in table


def test_inspect_json_and_text(art, capsys):
    adapter, _ = art.adapter("gpt2", "adalora")
    assert main(["inspect", str(adapter), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for field in (
        "method",
        "targets",
        "ranks",
        "parameters",
        "file_size",
        "base",
        "heads",
        "peftkit_version",
    ):
        assert field in info, field
    assert info["method"] == "adalora" and info["ranks"]["nominal"] == 12
    assert info["heads"]["modules"] == ["score"] and info["peftkit_version"] == peftkit.__version__
    assert main(["inspect", str(adapter)]) == 0
    text = capsys.readouterr().out
    assert "adalora" in text and "ranks" in text and info["base"]["digest"] in text


def test_combine_command_writes_a_loadable_adapter(art, tmp_path, capsys):
    first, expected = art.adapter("gpt2", "lora", seed=1)
    second, _ = art.adapter("gpt2", "lora", seed=2)
    out = tmp_path / "mix"
    assert main(["combine", str(first), str(second), "--weights", "1", "0", "--out", str(out)]) == 0
    assert "Combined 2 adapters" in capsys.readouterr().out
    assert_close(logits(load_adapter(make_model("gpt2"), out), "gpt2"), expected, rtol=1e-5, atol=1e-5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["combine", str(first), str(second), "--how", "svd", "--rank", "2", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["combine", str(first), str(second), "--out", str(first)]) == 1
    assert "is one of the adapters being combined" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, (
        "an existing directory is never replaced"
    )
    out = tmp_path / "svd"
    assert main(["combine", str(first), str(second), "--how", "svd", "--rank", "2", "--out", str(out)]) == 0
    assert (
        load_adapter(make_model("gpt2"), out).transformer.h[0].attn.c_attn.lora_A["default"].weight.shape[0]
        == 2
    )


def test_errors_exit_1_without_traceback_unless_debug(art, tmp_path, capsys):
    first, _ = art.adapter("gpt2", "lora", seed=1)
    other, _ = art.adapter("gpt2", "adalora", seed=2)
    argv = ["combine", str(first), str(other), "--out", str(tmp_path / "x")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        "peftkit combine: error: Cannot combine" in err and "methods differ" in err and "Traceback" not in err
    )
    assert main(["--debug", *argv]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

    broken_base = tmp_path / "base-without-weights"
    broken_base.mkdir()
    (broken_base / "config.json").write_text((art.base("gpt2") / "config.json").read_text())
    merge = ["merge", "--base", str(broken_base), "--adapter", str(first), "--out", str(tmp_path / "m")]
    assert main(merge) == 1  # transformers' own OSError: still one line
    err = capsys.readouterr().err
    assert err.startswith("peftkit merge: error: OSError") and "--debug" in err and "Traceback" not in err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert (
        main(["merge", "--base", str(art.base("gpt2")), "--adapter", str(first), "--out", str(a_file / "m")])
        == 1
    )
    assert "is a file, not a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "base-without-weights"]


def test_merge_head_only_and_force(art, tmp_path, capsys):
    adapter, _ = art.adapter("bert", "adapter")
    out = tmp_path / "head"
    assert (
        main(
            [
                "merge",
                "--base",
                str(art.base("bert")),
                "--adapter",
                str(adapter),
                "--out",
                str(out),
                "--head-only",
            ]
        )
        == 0
    )
    assert "NOT merged" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
    lora, expected = art.adapter("bert", "lora")
    other_base = str(art.base("bert", seed=7))
    argv = ["merge", "--base", other_base, "--adapter", str(lora), "--out", str(tmp_path / "forced")]
    assert main(argv) == 1
    assert "trained on" in capsys.readouterr().err
    assert main([*argv, "--force", "--dtype", "float16", "--task", "token-classification", "--no-check"]) == 0
    assert "peftkit merge: warning:" in capsys.readouterr().err
    merged = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "forced")
    assert merged.dtype == torch.float16
