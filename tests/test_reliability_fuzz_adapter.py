"""Fuzzing adapter directories: junk in ``peftkit.json``, ``adapter_config.json`` or the safetensors header.

Property: :func:`peftkit.read_adapter_dir` and :func:`peftkit.load_adapter` either succeed or raise
:class:`~peftkit.errors.AdapterFileError` / :class:`~peftkit.errors.UnknownMethodError` (or, for a
damaged base fingerprint, :class:`~peftkit.errors.BaseModelMismatchError`) whose message names the
adapter directory or file. Never a ``KeyError``/``TypeError``/``AttributeError`` from deep inside, and a
refused load leaves the model untouched. Hand-written cases live in ``tests/test_io_files.py``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import peftkit
from peftkit.errors import AdapterFileError, BaseModelMismatchError, MergeError, UnknownMethodError
from peftkit.io import load_adapter, read_adapter_dir, save_adapter
from peftkit.io.files import check_safetensors_header, read_safetensors
from peftkit.merge.describe import describe_adapter
from peftkit.state import get_state
from tests.tiny_models import make_model

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
EXPECTED = (AdapterFileError, UnknownMethodError, BaseModelMismatchError)
CONFIG, META, WEIGHTS = "adapter_config.json", "peftkit.json", "adapter_model.safetensors"

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.sampled_from(["lora", "LORA", "adalora", "adapter", "BOTTLENECK", "base_model.model.x", "query"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved LoRA adapter of the tiny BERT (5 labels, classifier head saved with it)."""
    torch.manual_seed(0)
    model = peftkit.wrap(make_model("bert"), "lora", r=2)
    model.config.id2label = {i: f"L{i}" for i in range(5)}
    return save_adapter(model, tmp_path_factory.mktemp("pristine") / "adapter")


@contextmanager
def copy_of(pristine: Path) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fuzz-adapter-"))
    try:
        yield Path(shutil.copytree(pristine, root / "adapter"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def load_or_refuse(directory: Path) -> None:
    """Describe (``peftkit inspect``), read and load ``directory``; refusals must name the directory."""
    try:
        json.dumps(describe_adapter(directory))
    except (AdapterFileError, MergeError) as exc:
        assert str(directory) in str(exc), f"{type(exc).__name__} does not name the directory: {exc}"
    model = make_model("bert")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_adapter_dir(directory)
            load_adapter(model, directory)
    except EXPECTED as exc:
        assert str(directory) in str(exc), f"{type(exc).__name__} does not name the directory: {exc}"
        assert get_state(model) is None, "a refused load must leave the model as it was"
        after = dict(model.named_parameters())
        assert after.keys() == before.keys()
        for name, value in before.items():
            assert torch.equal(after[name], value), name


def mutate(obj: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Drop some keys and replace others with junk (keys drawn from the real ones and a few new ones)."""
    out = dict(obj)
    for key in data.draw(st.lists(st.sampled_from(sorted(obj)), max_size=3, unique=True)):
        del out[key]
    keys = st.sampled_from(sorted(obj) + ["format_version", "method", "rank_pattern", "x"])
    for key in data.draw(st.lists(keys, max_size=3, unique=True)):
        out[key] = data.draw(JSON)
    return out


def mutate_nested(obj: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Replace one value inside a nested mapping of ``obj`` (heads, files, options, base)."""
    out = json.loads(json.dumps(obj))
    parents = [k for k, v in out.items() if isinstance(v, dict) and v]
    if not parents:
        return out
    parent = data.draw(st.sampled_from(sorted(parents)))
    key = data.draw(st.sampled_from(sorted(out[parent])))
    out[parent][key] = data.draw(JSON)
    return out


@FUZZ
@given(data=st.data(), target=st.sampled_from([META, CONFIG]), nested=st.booleans())
def test_mutated_json_files_are_loaded_or_refused_naming_the_directory(
    pristine: Path, data: st.DataObject, target: str, nested: bool
) -> None:
    with copy_of(pristine) as directory:
        original = json.loads((directory / target).read_text())
        new = mutate_nested(original, data) if nested else mutate(original, data)
        (directory / target).write_text(json.dumps(new))
        load_or_refuse(directory)


@FUZZ
@given(junk=JSON, target=st.sampled_from([META, CONFIG]))
@example(junk=[1, 2], target=META)
@example(junk={"format_version": 1, "files": [1]}, target=META)
def test_junk_json_documents_are_refused_naming_the_file(pristine: Path, junk: Any, target: str) -> None:
    with copy_of(pristine) as directory:
        (directory / target).write_text(json.dumps(junk))
        load_or_refuse(directory)


@FUZZ
@given(raw=st.binary(max_size=64), target=st.sampled_from([META, CONFIG]))
@example(raw=b"[" * 5000, target=CONFIG)  # json recurses: RecursionError unless handled
@example(raw=b"\xff\xfe{}", target=META)
def test_junk_bytes_are_refused_naming_the_file(pristine: Path, raw: bytes, target: str) -> None:
    with copy_of(pristine) as directory:
        (directory / target).write_bytes(raw)
        load_or_refuse(directory)


@FUZZ
@given(
    method=st.text(min_size=1, max_size=12).filter(lambda m: m.strip().lower() not in peftkit.methods()),
    plugin=st.none() | st.text(max_size=12),
)
@example(method="lroa", plugin=None)
@example(method="my_method", plugin="my-peftkit-plugin")
def test_unknown_method_names_file_and_closest_method(
    pristine: Path, method: str, plugin: str | None
) -> None:
    with copy_of(pristine) as directory:
        meta = json.loads((directory / META).read_text())
        meta.update(method=method, plugin=plugin)
        (directory / META).write_text(json.dumps(meta))
        with pytest.raises((UnknownMethodError, AdapterFileError)) as info:
            load_adapter(make_model("bert"), directory)
        message = str(info.value)
        assert str(directory) in message and repr(method) in message, message
        if method == "lroa":
            assert "Did you mean 'lora'?" in message
        if plugin:
            assert repr(plugin) in message


@FUZZ
@given(version=st.integers(2, 2**62) | st.just(10**30))
def test_any_future_format_version_asks_for_an_upgrade(pristine: Path, version: int) -> None:
    with copy_of(pristine) as directory:
        meta = json.loads((directory / META).read_text())
        meta["format_version"] = version
        (directory / META).write_text(json.dumps(meta))
        with pytest.raises(AdapterFileError, match=rf"newer peftkit \(format version {version}.*Upgrade"):
            read_adapter_dir(directory)


# ----------------------------------------------------------------------------------------------
# The safetensors header, parsed by peftkit before safetensors sees the file

HEADER_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "BOOL", "F33", "", 7]),
        "shape": st.lists(st.integers(-2, 6) | st.booleans() | st.none(), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3) | JSON,
    },
)


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=12), HEADER_ENTRY | JSON, max_size=3),
    metadata=st.none() | JSON,
    payload=st.binary(max_size=80),
    declared=st.none() | st.integers(0, 300),
)
@example(header={"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, metadata=None, payload=b"\0" * 8,
         declared=None)  # fmt: skip
@example(header={"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}, "b": {"dtype": "F32", "shape": [2],
         "data_offsets": [0, 8]}}, metadata=None, payload=b"\0" * 12, declared=None)  # fmt: skip
def test_random_safetensors_headers_are_read_or_refused_naming_the_file(
    header: dict[str, Any], metadata: Any, payload: bytes, declared: int | None
) -> None:
    if metadata is not None:
        header = {**header, "__metadata__": metadata}
    raw_header = json.dumps(header).encode()
    length = len(raw_header) if declared is None else declared
    data = length.to_bytes(8, "little") + raw_header + payload
    path = Path(tempfile.mkdtemp(prefix="fuzz-st-")) / WEIGHTS
    try:
        path.write_bytes(data)
        try:
            tensors = read_safetensors(path)
        except AdapterFileError as exc:
            assert str(path) in str(exc), str(exc)
        else:
            assert set(tensors) == set(check_safetensors_header(path, data))
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_every_truncation_and_byte_flip_of_the_weights_is_refused(
    pristine: Path, data: st.DataObject
) -> None:
    """With the checksum the whole file is protected; without it the header still is."""
    with copy_of(pristine) as directory:
        path = directory / WEIGHTS
        raw = bytearray(path.read_bytes())
        header_end = 8 + int.from_bytes(raw[:8], "little")
        if data.draw(st.booleans(), label="truncate"):
            raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
        else:
            position = data.draw(st.integers(0, len(raw) - 1), label="position")
            raw[position] ^= data.draw(st.integers(1, 255), label="xor")
        path.write_bytes(bytes(raw))
        with_checksum = data.draw(st.booleans(), label="with_checksum")
        if not with_checksum:
            meta = json.loads((directory / META).read_text())
            del meta["files"]
            (directory / META).write_text(json.dumps(meta))
        try:
            read_adapter_dir(directory)
        except AdapterFileError as exc:
            assert str(path) in str(exc) or str(directory) in str(exc), str(exc)
        else:
            assert not with_checksum, "a damaged file passed the checksum"
            assert len(raw) == len(path.read_bytes()) and header_end <= len(raw)
        load_or_refuse(directory)
