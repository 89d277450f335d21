"""Recipe configs: YAML + command-line overrides, strict types, helpful errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from peftkit.config import RecipeConfig, TrainConfig, config_to_dict, parse_config, save_config
from peftkit.errors import ConfigError


@dataclasses.dataclass
class NerConfig(RecipeConfig):
    """A recipe's own config: the shared fields plus one of its own.

    Attributes:
        label_all_tokens: Label every word piece, not only the first.
        scheme: Tagging scheme.
    """

    label_all_tokens: bool = False
    scheme: Literal["IOB1", "IOB2"] = "IOB2"


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_yaml_then_command_line(tmp_path):
    path = write(tmp_path, "lr: 1e-4\nepochs: 5\nmethod: adalora\ntarget-modules: [query, value]\n")
    cfg = parse_config(NerConfig, ["--config", str(path), "--epochs", "2", "--label-all-tokens"])
    assert cfg.lr == 1e-4  # YAML 1.1 reads '1e-4' as a string; float fields accept it
    assert cfg.epochs == 2  # the command line wins over the file
    assert cfg.method == "adalora" and cfg.target_modules == ["query", "value"]
    assert cfg.label_all_tokens is True and cfg.batch_size == 16  # default kept


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--model-path", "/m"], "model_path", "/m"),
        (["--model_path", "/m"], "model_path", "/m"),
        (["--method", "adapter"], "method", "adapter"),
        (["--r", "4"], "r", 4),
        (["--epochs", "7"], "epochs", 7),
        (["--lr", "3e-4"], "lr", 3e-4),
        (["--batch-size", "8"], "batch_size", 8),
        (["--max-train-samples", "100"], "max_train_samples", 100),
        (["--max-train-samples", "none"], "max_train_samples", None),
        (["--load-in-8bit"], "load_in_8bit", True),
        (["--load-in-4bit"], "load_in_4bit", True),
        (["--base-dtype", "bfloat16"], "base_dtype", "bfloat16"),
        (["--gradient-checkpointing"], "gradient_checkpointing", True),
        (["--no-checkpoint-trainable-only"], "checkpoint_trainable_only", False),
        (["--output-dir", "runs/x"], "output_dir", "runs/x"),
        (["--seed", "1"], "seed", 1),
        (["--resume"], "resume", True),
        (["--checkpoint-every", "50"], "checkpoint_every", 50),
        (["--grad-accum", "4"], "grad_accum", 4),
        (["--method-options", "{tinit: 10, beta1: 0.9}"], "method_options", {"tinit": 10, "beta1": 0.9}),
        (["--scheme", "IOB1"], "scheme", "IOB1"),
    ],
)
def test_every_field_has_a_flag(argv, field, expected):
    assert getattr(parse_config(NerConfig, argv), field) == expected


def test_8bit_and_4bit_together_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="--load-in-8bit / --load-in-4bit"):
        parse_config(NerConfig, ["--load-in-8bit", "--load-in-4bit"])
    with pytest.raises(ConfigError, match="bfloat16"):
        parse_config(NerConfig, ["--base-dtype", "int8"])


def test_unknown_yaml_key_names_key_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "lr: 0.001\nbatch_sise: 8\n")
    with pytest.raises(ConfigError) as info:
        parse_config(RecipeConfig, ["--config", str(path)])
    message = str(info.value)
    assert "'batch_sise'" in message and str(path) in message and "line 2" in message
    assert "Did you mean 'batch_size'?" in message


def test_unknown_command_line_option_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown option '--learning-rat'"):
        parse_config(RecipeConfig, ["--learning-rat", "1"])
    with pytest.raises(ConfigError, match=r"Did you mean '--grad-accum'\?"):
        parse_config(RecipeConfig, ["--grad-acum", "2"])


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [("learning-rate", "lr"), ("num-train-epochs", "epochs"), ("lora-alpha", "alpha"), ("rank", "r")],
)
def test_names_from_transformers_and_peft_point_to_ours(tmp_path, theirs: str, ours: str):
    with pytest.raises(ConfigError, match=rf"Did you mean '--{ours}'\?"):
        parse_config(RecipeConfig, [f"--{theirs}", "1"])
    key = theirs.replace("-", "_")
    with pytest.raises(ConfigError, match=rf"line 1: unknown key '{key}'. Did you mean '{ours}'\?"):
        parse_config(RecipeConfig, ["--config", str(write(tmp_path, f"{key}: 1\n"))])


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [
        ("--learnig-rate", "'--lr'? (peftkit's name for '--learning-rate')"),
        ("--lerning-rate", "'--lr'? (peftkit's name for '--learning-rate')"),
        ("--num-train-epoch", "'--epochs'? (peftkit's name for '--num-train-epochs')"),
        ("--lora-alpah", "'--alpha'? (peftkit's name for '--lora-alpha')"),
        ("--warmup-ratoi", "'--warmup-ratio'?"),  # our own names still win when they are the closest
        ("--grad-acum", "'--grad-accum'?"),
    ],
)
def test_misspelt_names_of_other_libraries_point_to_ours(typed: str, suggested: str):
    with pytest.raises(ConfigError) as info:
        parse_config(RecipeConfig, [typed, "1"])
    assert f"Did you mean {suggested}" in str(info.value)


def test_a_negative_number_in_scientific_notation_is_a_value_not_an_option():
    with pytest.raises(ConfigError, match=r"lr=-0.001 must be > 0 and finite: pass e.g. --lr 5e-4"):
        parse_config(RecipeConfig, ["--lr", "-1e-3"])  # not argparse's "expected one argument"
    assert parse_config(RecipeConfig, ["--lr", "1e-3", "--weight-decay", "0"]).lr == 1e-3


def test_output_dir_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    with pytest.raises(ConfigError, match=r"output_dir='.*notes.txt' is an existing file, not a directory"):
        parse_config(RecipeConfig, ["--output-dir", str(file)])
    with pytest.raises(ConfigError, match=r"cannot be created: '.*notes.txt' is a file"):
        TrainConfig(output_dir=str(file / "run"))
    assert TrainConfig(output_dir=str(tmp_path / "new" / "run")).output_dir.endswith("run")  # created later


@pytest.mark.parametrize(
    ("yaml_text", "key", "expected_type", "given"),
    [
        ("epochs: three\n", "epochs", "an integer", "'three'"),
        ("epochs: 2.5\n", "epochs", "an integer", "2.5"),
        ("lr: fast\n", "lr", "a number", "'fast'"),
        ("load_in_8bit: 'sometimes'\n", "load_in_8bit", "true/false", "'sometimes'"),
        ("target_modules: query\n", "target_modules", "a list of strings or null", "'query'"),
        ("lr_schedule: cosine\n", "lr_schedule", "one of 'linear', 'constant'", "'cosine'"),
    ],
)
def test_wrong_yaml_type_names_key_type_and_value(tmp_path, yaml_text, key, expected_type, given):
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        parse_config(RecipeConfig, ["--config", str(path)])
    message = str(info.value)
    assert f"'{key}' expects {expected_type}, got {given}" in message
    assert str(path) in message and "line 1" in message


def test_wrong_command_line_type():
    with pytest.raises(ConfigError, match=r"command line: 'batch_size' expects an integer, got 'big'"):
        parse_config(RecipeConfig, ["--batch-size", "big"])
    with pytest.raises(ConfigError, match=r"one of 'no', 'bf16', 'fp16'.*Did you mean 'bf16'\?"):
        parse_config(RecipeConfig, ["--mixed-precision", "bf61"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "lr: 0.001\nepochs: [1, 2\nseed: 3\n")
    with pytest.raises(ConfigError) as info:
        parse_config(RecipeConfig, ["-c", str(path)])
    assert str(path) in str(info.value) and "line 3" in str(info.value) and "invalid YAML" in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- lr\n- 3\n", "top level must be a mapping"),
        ("lr: 0.1\nlr: 0.2\n", "line 2: key 'lr' is repeated"),
    ],
)
def test_malformed_documents(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(RecipeConfig, ["--config", str(write(tmp_path, text))])


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read config file"):
        parse_config(RecipeConfig, ["--config", str(tmp_path / "nope.yaml")])
    assert parse_config(RecipeConfig, ["--config", str(write(tmp_path, ""))]) == RecipeConfig()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--lr", "0"], r"lr=0.0 must be > 0"),
        (["--batch-size", "0"], r"batch_size=0 must be >= 1 and finite: pass e.g. --batch-size 16"),
        (["--warmup-ratio", "1.5"], r"warmup_ratio=1.5 must lie in \[0, 1\)"),
        (["--lr", "inf"], r"lr=inf must be > 0 and finite"),
        (["--max-grad-norm", "nan"], r"max_grad_norm=nan must be >= 0 and finite"),
        (["--explode-factor", "nan"], r"explode_factor=nan must be >= 0"),
        (["--seed", "-1"], r"seed=-1 must lie in \[0, 2\*\*32\)"),
        (["--seed", "5000000000"], r"seed=5000000000 must lie in"),
        (["--method", "lroa"], r"method='lroa' is not a registered.*Did you mean 'lora'\?"),
    ],
)
def test_values_are_validated_at_construction(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(RecipeConfig, argv)


def test_saved_config_reads_back(tmp_path):
    cfg = parse_config(
        NerConfig, ["--lr", "2e-4", "--target-modules", "query", "--method-options", "{tinit: 3}"]
    )
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert parse_config(NerConfig, ["--config", str(path)]) == cfg
    assert config_to_dict(cfg)["lr"] == 2e-4


@pytest.mark.parametrize(
    ("method", "argv", "expected"),
    [
        ("lora", ["--r", "4", "--alpha", "8"], {"r": 4, "alpha": 8.0}),
        (
            "adalora",
            ["--r", "2", "--method-options", "{total_step: 100}"],
            {"target_r": 2, "total_step": 100},
        ),
        ("adapter", ["--method-options", "{reduction_factor: 8}"], {"reduction_factor": 8}),
    ],
)
def test_wrap_options_map_generic_fields_to_the_method(method, argv, expected):
    assert parse_config(RecipeConfig, ["--method", method, *argv]).wrap_options() == expected


def test_rank_has_no_meaning_for_the_adapter():
    with pytest.raises(ConfigError, match=r"r=4 has no meaning for method 'adapter'"):
        parse_config(RecipeConfig, ["--method", "adapter", "--r", "4"]).wrap_options()


def test_help_lists_fields_with_their_docs(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(NerConfig, ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--label-all-tokens" in out and "Label every word piece" in out and "--grad-accum" in out


def test_train_config_direct_construction_validates():
    with pytest.raises(ConfigError, match="keep_checkpoints=0"):
        TrainConfig(keep_checkpoints=0)


def test_help_shows_the_config_file_values_as_defaults(tmp_path, capsys):
    path = write(tmp_path, "lr: 2.0e-3\nbatch_size: 32\n", name="ner.yaml")
    with pytest.raises(SystemExit):
        parse_config(NerConfig, ["--config", str(path), "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "default: 0.002 in ner.yaml" in out and "default: 32 in ner.yaml" in out
    assert "default: 3)" in out  # epochs: not in the file, the dataclass default


def test_config_option_without_a_file_is_a_config_error():
    with pytest.raises(ConfigError, match=r"-c/--config: expected one argument"):
        parse_config(NerConfig, ["--config"])
