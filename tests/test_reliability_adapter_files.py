"""Damaged or lying adapter files are refused with a message naming the file and the tensor.

Complements ``tests/test_io_files.py`` (flipped header bytes, header length, truncation, checksum,
corrupted JSON, a wrong shape rewritten through safetensors, missing + extra tensors together, an
integer tensor, a config lying about the method, inconsistent peft_type, future format version,
missing files). Here: lies *inside* a well-formed safetensors header (dtype, shape, offsets), a
missing or an extra tensor on its own, stray tensor names, and JSON that lies about the targets,
the heads or the method in ways the tensors contradict.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import peftkit
from peftkit.errors import AdapterFileError
from peftkit.io import load_adapter, read_adapter_dir, save_adapter, write_adapter_dir
from peftkit.state import get_state
from tests.tiny_models import make_model

WEIGHTS, META, CONFIG = "adapter_model.safetensors", "peftkit.json", "adapter_config.json"
LAYER0_Q = "base_model.model.bert.encoder.layer.0.attention.self.query"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = peftkit.wrap(make_model("bert"), "lora", r=4)
    return save_adapter(model, tmp_path_factory.mktemp("pristine") / "adapter")


@pytest.fixture
def adapter(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "adapter"))


def edit_header(directory: Path, edit: Callable[[dict[str, Any]], None], drop_checksum: bool = True) -> None:
    """Rewrite the safetensors header in place (payload untouched); optionally drop the checksum."""
    path = directory / WEIGHTS
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])
    if drop_checksum:  # otherwise every edit is caught by the checksum before anything else
        meta = json.loads((directory / META).read_text())
        meta.pop("files", None)
        (directory / META).write_text(json.dumps(meta))


def edit_files(directory: Path, edit: Callable[[Any], None]) -> None:
    """Change tensors or configs and re-save consistently (a valid checksum over the new weights)."""
    files = read_adapter_dir(directory)
    edit(files)
    write_adapter_dir(directory, files.peft_config, files.meta, files.tensors)


def refused(directory: Path, *patterns: str, load: bool = True) -> str:
    model = make_model("bert")
    with pytest.raises(AdapterFileError) as info:
        read_adapter_dir(directory)
        if load:
            load_adapter(model, directory)
    message = str(info.value)
    assert str(directory) in message, message
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    assert get_state(model) is None
    return message


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("F16", "data bytes do not fit shape"),  # half the bytes the header promises
        ("F64", "data bytes do not fit shape"),
        ("I32", "dtype torch.int32"),  # same size, not floating point
        ("F33", "unknown dtype 'F33'"),
    ],
)
def test_header_lying_about_the_dtype_names_the_tensor(adapter: Path, dtype: str, expected: str) -> None:
    key = f"{LAYER0_Q}.lora_A.weight"
    edit_header(adapter, lambda h: h[key].__setitem__("dtype", dtype))
    refused(adapter, str(adapter / WEIGHTS), repr(key), expected)


def test_header_lying_about_the_shape_names_the_tensor_and_both_shapes(adapter: Path) -> None:
    key = f"{LAYER0_Q}.lora_A.weight"  # (4, 32): same bytes as (32, 4) or (128,)
    edit_header(adapter, lambda h: h[key].__setitem__("shape", [32, 4]))
    refused(adapter, repr(key), "shape (32, 4)", "expects (4, 32)")
    edit_header(adapter, lambda h: h[key].__setitem__("shape", [4, 31]))
    refused(adapter, repr(key), "do not fit shape [4, 31]")


def test_overlapping_data_offsets_are_refused(adapter: Path) -> None:
    a, b = f"{LAYER0_Q}.lora_A.weight", f"{LAYER0_Q}.lora_B.weight"

    def overlap(header: dict[str, Any]) -> None:
        begin = header[a]["data_offsets"][0]
        header[b]["data_offsets"] = [begin, begin + 4 * 32 * 4]  # B (32, 4) reads A's bytes

    edit_header(adapter, overlap)
    refused(adapter, str(adapter / WEIGHTS))


def test_checksum_catches_header_edits_first(adapter: Path) -> None:
    key = f"{LAYER0_Q}.lora_A.weight"
    edit_header(adapter, lambda h: h[key].__setitem__("shape", [32, 4]), drop_checksum=False)
    refused(adapter, "SHA-256 checksum", load=False)


def test_one_missing_tensor_is_named(adapter: Path) -> None:
    key = "base_model.model.classifier.bias"
    edit_files(adapter, lambda f: f.tensors.pop(key))
    refused(adapter, "1 tensors missing", key, "strict=False")


def test_one_extra_tensor_is_named(adapter: Path) -> None:
    extra = "base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"
    edit_files(adapter, lambda f: f.tensors.__setitem__(extra, torch.zeros(4, 32)))
    refused(adapter, "1 unexpected tensors", extra)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("base_model.model.bert.embeddings.word_embeddings.weight", "not a 'lora' weight nor a head weight"),
        (
            "bert.encoder.layer.0.attention.self.query.lora_A.weight",
            "does not start with 'base_model.model.'",
        ),
        (f"{LAYER0_Q}.adapter_down.weight", "looks like a 'adapter' adapter"),
    ],
)
def test_stray_tensors_are_named(adapter: Path, key: str, expected: str) -> None:
    """A base weight smuggled into an adapter file (e.g. a full fine-tune saved by mistake) is refused."""
    edit_files(adapter, lambda f: f.tensors.__setitem__(key, torch.zeros(3)))
    refused(adapter, repr(key), expected)


def test_config_lying_about_the_targets(adapter: Path) -> None:
    def lie(files: Any) -> None:
        files.meta["targets"] = [t.replace("value", "key") for t in files.meta["targets"]]

    edit_files(adapter, lie)
    refused(adapter, "missing", "unexpected", "value.lora_A.weight")


def test_config_lying_about_the_heads(adapter: Path) -> None:
    edit_files(adapter, lambda f: f.meta["heads"].__setitem__("modules", []))
    refused(adapter, "base_model.model.classifier.", "not a 'lora' weight nor a head weight", load=False)


@pytest.mark.parametrize(
    ("method", "peft_type", "expected"),
    [
        ("adalora", "ADALORA", "does not fit the method 'adalora'"),
        ("lora", "ADAPTER", "inconsistent"),
    ],
)
def test_config_lying_about_the_method(adapter: Path, method: str, peft_type: str, expected: str) -> None:
    def lie(files: Any) -> None:
        files.meta["method"], files.peft_config["peft_type"] = method, peft_type

    edit_files(adapter, lie)
    refused(adapter, expected, load=False)


def test_a_peft_directory_with_an_unsupported_peft_type_names_the_file(adapter: Path) -> None:
    (adapter / META).unlink()
    config = json.loads((adapter / CONFIG).read_text())
    config["peft_type"] = "VERA"  # a peft method peftkit has no method for
    (adapter / CONFIG).write_text(json.dumps(config))
    refused(adapter, "peft_type='VERA'", "cannot load", "LORA")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("files", {WEIGHTS: "0" * 64}, "'files' must be a mapping"),
        ("heads", {"modules": ["classifier"], "id2label": {"a": "B-PER"}}, "'heads' must be"),
        ("targets", "query", "'targets' must be a list"),
        ("options", {"r": 4, "bias": 1}, "options recorded"),  # r is also in adapter_config.json, which wins
    ],
)
def test_malformed_metadata_fields_are_named(adapter: Path, field: str, value: Any, expected: str) -> None:
    meta = json.loads((adapter / META).read_text())
    meta[field] = value
    (adapter / META).write_text(json.dumps(meta))
    refused(adapter, expected, load=False)


def test_float16_weights_load_as_the_model_dtype(adapter: Path) -> None:
    """Another *floating* dtype is not damage: the weights are cast, like peft does."""
    reference = read_adapter_dir(adapter).tensors
    edit_files(adapter, lambda f: f.tensors.update({k: v.half() for k, v in f.tensors.items()}))
    model = load_adapter(make_model("bert"), adapter)
    name = "bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
    loaded = dict(model.named_parameters())[name]
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, reference[f"{LAYER0_Q}.lora_A.weight"], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("command", ["inspect", "merge"])
@pytest.mark.parametrize(
    ("file", "junk"),
    [(META, b'{"format_version": 1, "files": [1]}'), (CONFIG, b"[" * 5000), (WEIGHTS, b"\x00" * 12)],
    ids=["meta-junk", "config-deep", "weights-junk"],
)
def test_the_cli_reports_damaged_files_in_one_line(
    adapter: Path, tmp_path: Path, capsys, command, file, junk
) -> None:
    """``peftkit inspect`` / ``peftkit merge`` on a damaged adapter: exit status 1 and a message, no traceback."""
    from peftkit.cli import main

    (adapter / file).write_bytes(junk)
    argv = [command, str(adapter)] if command == "inspect" else [
        "merge", "--base", str(tmp_path), "--adapter", str(adapter), "--out", str(tmp_path / "out")
    ]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"peftkit {command}: error: ") and str(adapter) in err and "Traceback" not in err, (
        err
    )
    assert not (tmp_path / "out").exists()
