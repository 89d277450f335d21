"""Fuzzing the recipe-config parser: any YAML file or command line yields a config or a ConfigError.

The property under test is the one users rely on: a typo, a wrong type, a broken or binary
file never ends in a bare traceback from PyYAML, argparse or a dataclass; the error is a
:class:`~peftkit.errors.ConfigError` that names the key (and suggests the closest valid one).
Hand-written cases of each message are in ``tests/test_config.py``; here they are generated.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from peftkit.config import RecipeConfig, TrainConfig, config_from_dict, load_yaml_config, parse_config
from peftkit.errors import ConfigError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: parse_config builds an argparse parser per call (~35 ms of CPU): fewer command-line examples.
FUZZ_CLI = settings(FUZZ, max_examples=30)

FIELDS = [f.name for f in dataclasses.fields(RecipeConfig)]
FLAGS = ["--" + name.replace("_", "-") for name in FIELDS]

#: Scalars YAML can produce, of every type the parser may meet (incl. ones it must refuse).
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1e-4", "nan", "-inf", "linear", "bf16", "lora", "yes", "0x1F", "~", "{}", "[]"]),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _tmp_yaml(content: str | bytes) -> Path:
    handle = tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False)
    with handle:
        handle.write(content.encode("utf-8") if isinstance(content, str) else content)
    return Path(handle.name)


def _parse_file(content: str | bytes, cls: type = RecipeConfig) -> Any:
    """What ``parse_config(cls, ["--config", file])`` does, without building the argparse parser."""
    path = _tmp_yaml(content)
    try:
        return config_from_dict(cls, load_yaml_config(cls, path))
    finally:
        path.unlink()


def _typo(word: str, data: st.DataObject) -> str:
    """One edit (delete, swap, replace or insert a letter) of ``word``."""
    kind = data.draw(st.sampled_from(["delete", "swap", "replace", "insert"]))
    i = data.draw(st.integers(0, len(word) - 2))
    letter = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz"))
    if kind == "delete":
        return word[:i] + word[i + 1 :]
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "replace":
        return word[:i] + letter + word[i + 1 :]
    return word[:i] + letter + word[i:]


# ----------------------------------------------------------------------------------------------
# YAML files


@FUZZ
@given(values=st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=5))
def test_any_values_for_known_keys_give_a_config_or_a_config_error(values: dict[str, Any]) -> None:
    text = yaml.safe_dump(values, allow_unicode=True)
    try:
        cfg = _parse_file(text)
    except ConfigError as exc:
        message = str(exc)
        assert any(f"'{key}'" in message or f"{key}=" in message for key in values), message
        return
    assert isinstance(cfg, RecipeConfig)
    for key, value in values.items():  # what was accepted was kept (floats may come from strings)
        got = getattr(cfg, key)
        assert got == value or isinstance(got, float) or got is None or key == "method_options", (key, value)


@FUZZ
@given(data=st.data(), field=st.sampled_from([f for f in FIELDS if len(f) >= 4]))
def test_misspelled_yaml_key_is_named_with_the_closest_valid_key(data: st.DataObject, field: str) -> None:
    typo = _typo(field, data)
    assume(typo not in FIELDS and typo.replace("-", "_") not in FIELDS)
    with pytest.raises(ConfigError) as info:
        _parse_file(f"seed: 3\n{typo}: 1\n")
    message = str(info.value)
    assert f"unknown key '{typo}'" in message and "line 2" in message
    suggestion = message.split("Did you mean '")[1].split("'")[0]
    assert suggestion in FIELDS, message


@FUZZ
@given(content=st.binary(max_size=200))
@example(content=b"\xff\xfe\x00lr: 1")  # not UTF-8
@example(content=b"lr: 1\x00")  # NUL: PyYAML's reader refuses it
@example(content=b"[" * 600)  # deep nesting: PyYAML's composer recurses
@example(content=b"{a: " * 600)
@example(content=b"a: &x [*x]")
def test_arbitrary_bytes_as_a_yaml_file_never_escape_as_another_error(content: bytes) -> None:
    try:
        cfg = _parse_file(content)
    except ConfigError as exc:
        assert "yaml" in str(exc).lower() or "key" in str(exc) or "expects" in str(exc), str(exc)
    else:
        assert isinstance(cfg, RecipeConfig)


@FUZZ
@given(text=st.text(max_size=120))
@example(text="lr: 1\n\tepochs: 2")
@example(text="? [a, b]\n: 1")
@example(text="<<: {lr: 0.1}")
@example(text="--- \nlr: 1\n---\nlr: 2\n")
@example(text="lr: !!python/object/apply:os.system ['true']")
def test_arbitrary_text_as_a_yaml_file_never_escapes_as_another_error(text: str) -> None:
    try:
        _parse_file(text)
    except ConfigError:
        pass


# ----------------------------------------------------------------------------------------------
# Command lines

ARG = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(["--config", "-c", "--no-cpu", "--resume", "--lr=0.1", "--", "-", "-1", "--=", "---x"]),
    st.text(max_size=10).filter(lambda s: s not in ("-h", "--help") and not s.startswith("--h")),
)


@FUZZ_CLI
@given(argv=st.lists(ARG, max_size=6))
@example(argv=["--config", "a\x00b"])  # a path with a NUL byte
@example(argv=["--config", "/"])  # a directory
@example(argv=["--method-options", "{a: [}"])
@example(argv=["--method-options", "[1, 2]"])
@example(argv=["--target-modules"])
def test_any_command_line_gives_a_config_or_a_config_error(argv: list[str]) -> None:
    assume(not any(a.startswith("--h") or a == "-h" for a in argv))
    try:
        cfg = parse_config(RecipeConfig, argv)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(cfg, RecipeConfig)


@FUZZ_CLI
@given(data=st.data(), flag=st.sampled_from([f for f in FLAGS if len(f) >= 6]))
def test_misspelled_option_suggests_the_closest(data: st.DataObject, flag: str) -> None:
    typo = "--" + _typo(flag[2:], data)
    valid = set(FLAGS) | {"--" + f for f in FIELDS} | {"--config"}
    valid |= {"--no-" + f[2:] for f in FLAGS}
    assume(typo not in valid and not any(v.startswith(typo) for v in valid))
    with pytest.raises(ConfigError) as info:
        parse_config(RecipeConfig, [typo, "1"])
    message = str(info.value)
    assert f"unknown option '{typo}'" in message and "Did you mean '--" in message, message


@dataclasses.dataclass
class _Typed(TrainConfig):
    """Config with one field of each kind the parser handles.

    Attributes:
        names: A list.
        options: A mapping.
        choice: A literal.
        maybe: An optional integer.
    """

    names: list[str] = dataclasses.field(default_factory=list)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    choice: str = "a"
    maybe: int | None = None


@FUZZ_CLI
@given(field=st.sampled_from([f.name for f in dataclasses.fields(_Typed)]), value=st.text(max_size=12))
def test_any_string_for_any_field_on_the_command_line(field: str, value: str) -> None:
    assume(not value.startswith("-"))
    flag = "--" + field.replace("_", "-")
    try:
        parse_config(_Typed, [flag, value] if not isinstance(_default(field), bool) else [flag])
    except ConfigError as exc:
        assert f"'{field}'" in str(exc) or f"{field}=" in str(exc) or flag in str(exc), str(exc)


def _default(field: str) -> Any:
    return getattr(_Typed(), field)


def test_a_file_given_on_the_command_line_is_read_the_same_way(tmp_path: Path) -> None:
    """The fuzzed YAML path above is the one ``parse_config --config`` takes, bad bytes included."""
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfelr: 1")
    with pytest.raises(ConfigError, match=r"Cannot read config file .*bad\.yaml.*UTF-8"):
        parse_config(RecipeConfig, ["--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "deep.yaml").write_bytes(b"lr: " + b"[" * 600)
    with pytest.raises(ConfigError, match=r"deep\.yaml: invalid YAML"):
        parse_config(RecipeConfig, ["--config", str(tmp_path / "deep.yaml")])
    with pytest.raises(ConfigError, match="Cannot read config file.*null byte"):
        parse_config(RecipeConfig, ["--config", "a\x00b"])
