"""Adapter directories on disk: size, damaged files, lying configs, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftkit.errors import AdapterFileError
from peftkit.io import files as io_files
from peftkit.io import load_adapter, read_adapter_dir, save_adapter, write_adapter_dir
from tests.test_io_support import METHODS, logits, trained
from tests.tiny_models import make_model

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine saved LoRA adapter (bert); tests copy it before damaging it."""
    return save_adapter(trained("bert", "lora"), tmp_path_factory.mktemp("pristine") / "adapter")


@pytest.fixture
def adapter_copy(lora_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "adapter"
    target.mkdir()
    for path in lora_dir.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def _header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("method", METHODS)
def test_file_size_is_bounded_by_trainable_parameters(method: str, tmp_path: Path) -> None:
    model = trained("gpt2", method)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    directory = save_adapter(model, tmp_path / "a")
    size = (directory / WEIGHTS).stat().st_size
    assert size <= trainable * 4 + 64 * 1024
    assert sum(p.stat().st_size for p in directory.iterdir()) <= trainable * 4 + 64 * 1024


def test_flipped_header_bytes_name_the_file(adapter_copy: Path) -> None:
    path = adapter_copy / WEIGHTS
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe\x00\x01"  # the header's JSON starts at byte 8
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors.*corrupted"):
        read_adapter_dir(adapter_copy)


def test_corrupted_header_length(adapter_copy: Path) -> None:
    path = adapter_copy / WEIGHTS
    data = bytearray(path.read_bytes())
    data[0:8] = (10**9).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match="header claims"):
        read_adapter_dir(adapter_copy)


def test_truncated_file_names_the_tensor(adapter_copy: Path) -> None:
    path = adapter_copy / WEIGHTS
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + _header_length(path)])
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    path.write_bytes(data[:-10])
    with pytest.raises(AdapterFileError, match=rf"tensor '{last}'.*truncated"):
        read_adapter_dir(adapter_copy)


def test_flipped_weight_bytes_fail_the_checksum(adapter_copy: Path) -> None:
    path = adapter_copy / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match="checksum"):
        load_adapter(make_model("bert"), adapter_copy)


def test_corrupted_json_config(adapter_copy: Path) -> None:
    text = (adapter_copy / "adapter_config.json").read_text()
    (adapter_copy / "adapter_config.json").write_text(text[: len(text) // 2])
    with pytest.raises(AdapterFileError, match=r"adapter_config\.json.*not valid JSON"):
        read_adapter_dir(adapter_copy)


def _rewrite(directory: Path, edit) -> None:
    files = read_adapter_dir(directory)
    edit(files)
    write_adapter_dir(directory, files.peft_config, files.meta, files.tensors)


def test_wrong_shape_names_the_tensor(adapter_copy: Path) -> None:
    key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight"
    _rewrite(adapter_copy, lambda f: f.tensors.__setitem__(key, torch.zeros(4, 31)))
    with pytest.raises(AdapterFileError, match=rf"{key}.*shape \(4, 31\).*expects \(4, 32\)"):
        load_adapter(make_model("bert"), adapter_copy)


def test_missing_and_extra_tensors(adapter_copy: Path) -> None:
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"
    extra = "base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"

    def edit(files):
        files.tensors[extra] = files.tensors.pop(key)[:4]

    _rewrite(adapter_copy, edit)
    with pytest.raises(
        AdapterFileError, match=r"1 tensors missing \(.*query\.lora_B.*1 unexpected.*key\.lora_A"
    ):
        load_adapter(make_model("bert"), adapter_copy)
    model = make_model("bert")
    with pytest.warns(UserWarning, match="missing"):
        load_adapter(model, adapter_copy, strict=False)


def test_integer_tensor_is_refused(adapter_copy: Path) -> None:
    key = "base_model.model.classifier.bias"
    _rewrite(adapter_copy, lambda f: f.tensors.__setitem__(key, torch.zeros(5, dtype=torch.int32)))
    with pytest.raises(AdapterFileError, match=rf"{key}.*torch.int32"):
        read_adapter_dir(adapter_copy)


def test_config_lying_about_the_method(adapter_copy: Path) -> None:
    def edit(files):
        files.meta["method"] = "adapter"
        files.peft_config["peft_type"] = "ADAPTER"

    _rewrite(adapter_copy, edit)
    with pytest.raises(
        AdapterFileError, match=r"does not fit the method 'adapter'.*looks like a 'lora' adapter"
    ):
        read_adapter_dir(adapter_copy)


def test_inconsistent_peft_type(adapter_copy: Path) -> None:
    _rewrite(adapter_copy, lambda f: f.peft_config.__setitem__("peft_type", "ADALORA"))
    with pytest.raises(AdapterFileError, match="inconsistent.*peft_type='ADALORA'"):
        read_adapter_dir(adapter_copy)


def test_future_format_version_asks_for_an_upgrade(adapter_copy: Path) -> None:
    meta = json.loads((adapter_copy / "peftkit.json").read_text())
    meta["format_version"] = 99
    (adapter_copy / "peftkit.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match="newer peftkit.*format version 99.*Upgrade"):
        read_adapter_dir(adapter_copy)


def test_missing_pieces(adapter_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match="does not exist"):
        read_adapter_dir(tmp_path / "nowhere")
    with pytest.raises(AdapterFileError, match="is a file"):
        read_adapter_dir(adapter_copy / WEIGHTS)
    (adapter_copy / WEIGHTS).rename(adapter_copy / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match="never unpickles"):
        read_adapter_dir(adapter_copy)
    (adapter_copy / "adapter_config.json").unlink()
    with pytest.raises(AdapterFileError, match=r"adapter_config\.json is missing"):
        read_adapter_dir(adapter_copy)


def test_failing_save_keeps_the_old_adapter(lora_dir: Path, adapter_copy: Path, monkeypatch) -> None:
    expected = logits(load_adapter(make_model("bert"), adapter_copy), "bert")
    original = io_files.write_file

    def write_then_fail(path: Path, data: bytes) -> None:
        if path.name == "peftkit.json":  # the weights and the peft config are already written
            raise OSError("disk full")
        original(path, data)

    monkeypatch.setattr(io_files, "write_file", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(trained("bert", "lora", adapter_seed=1), adapter_copy)
    assert sorted(p.name for p in adapter_copy.parent.iterdir()) == ["adapter"], "no partial directory left"
    for path in lora_dir.iterdir():
        assert (adapter_copy / path.name).read_bytes() == path.read_bytes()
    torch.testing.assert_close(logits(load_adapter(make_model("bert"), adapter_copy), "bert"), expected)


def test_a_save_removes_what_killed_saves_left_but_nothing_else(adapter_copy: Path, monkeypatch) -> None:
    parent = adapter_copy.parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = io_files._host_tag()
    leftovers = {
        "dead-tmp": f".adapter.tmp-{host}-{dead.pid}-x1",  # killed between the writes and the swap
        "dead-old": f".adapter.old-{host}-{dead.pid}-x2",  # killed between the two fallback renames
        "live": f".adapter.tmp-{host}-{os.getppid()}-x3",  # another process saving right now
        "other-host": f".adapter.tmp-elsewhere-{dead.pid}-x4",  # shared file system: not ours to judge
        "other-target": f".other.tmp-{host}-{dead.pid}-x5",
        "legacy-name": ".adapter.tmp-abcd1234",
    }
    for name in leftovers.values():
        (parent / name).mkdir()
        (parent / name / "adapter_model.safetensors").write_bytes(b"partial")

    def full_disk(path: Path, data: bytes) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:  # a failed save removes nothing
        patch.setattr(io_files, "write_file", full_disk)
        with pytest.raises(OSError, match="disk full"):
            save_adapter(trained("bert", "lora", adapter_seed=2), adapter_copy)
    assert {p.name for p in parent.iterdir()} == {"adapter"} | set(leftovers.values())

    save_adapter(trained("bert", "lora", adapter_seed=2), adapter_copy)
    kept = {p.name for p in parent.iterdir()}
    assert kept == {"adapter"} | set(leftovers.values()) - {leftovers["dead-tmp"], leftovers["dead-old"]}


def test_overwrite_replaces_an_adapter_and_keeps_foreign_files(adapter_copy: Path) -> None:
    new = trained("bert", "adapter")
    save_adapter(new, adapter_copy)
    assert read_adapter_dir(adapter_copy).method == "adapter"
    assert sorted(p.name for p in adapter_copy.parent.iterdir()) == ["adapter"]

    (adapter_copy / "tokenizer.json").write_text("{}")
    (adapter_copy / "extra").mkdir()
    (adapter_copy / "extra" / "vocab.txt").write_text("[PAD]\n")
    save_adapter(trained("bert", "lora"), adapter_copy)
    assert read_adapter_dir(adapter_copy).method == "lora"
    assert (adapter_copy / "tokenizer.json").read_text() == "{}"
    assert (adapter_copy / "extra" / "vocab.txt").read_text() == "[PAD]\n"
    assert sorted(p.name for p in adapter_copy.iterdir()) == sorted(
        ["adapter_config.json", WEIGHTS, "peftkit.json", "tokenizer.json", "extra"]
    )
    assert sorted(p.name for p in adapter_copy.parent.iterdir()) == ["adapter"]


def test_a_save_interrupted_at_the_swap_keeps_the_old_adapter_and_its_neighbours(
    adapter_copy: Path, monkeypatch
) -> None:
    """With other files in the directory too, the new version appears in one rename or not at all."""
    (adapter_copy / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in adapter_copy.iterdir()}
    expected = logits(load_adapter(make_model("bert"), adapter_copy), "bert")

    real_replace, renames = os.replace, []

    def killed_at_the_swap(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill between writing the new files and publishing them

    def killed_at_the_second_rename(source, destination):
        renames.append(destination)
        if len(renames) == 2:
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(io_files, "_exchange", killed_at_the_swap)
    monkeypatch.setattr(io_files.os, "replace", killed_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(trained("bert", "lora", adapter_seed=1), adapter_copy)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in adapter_copy.iterdir()} == before
    assert sorted(p.name for p in adapter_copy.parent.iterdir()) == ["adapter"], "no temp directory left"
    torch.testing.assert_close(logits(load_adapter(make_model("bert"), adapter_copy), "bert"), expected)


def test_write_adapter_dir_round_trips_arbitrary_tensors(tmp_path: Path) -> None:
    tensors = {
        "base_model.model.x.lora_A.weight": torch.randn(2, 3),
        "base_model.model.x.lora_B.weight": torch.randn(3, 2),
    }
    meta = {"method": "lora", "custom": [1, 2]}
    directory = write_adapter_dir(tmp_path / "d", {"peft_type": "LORA"}, meta, tensors)
    files = read_adapter_dir(directory)
    assert files.meta["custom"] == [1, 2] and files.meta["format_version"] == 1 and "files" not in meta
    for key, tensor in tensors.items():
        torch.testing.assert_close(files.tensors[key], tensor)
    with pytest.raises(AdapterFileError, match="is a file"):
        write_adapter_dir(directory / WEIGHTS, {}, {}, tensors)


def test_invalid_recorded_options(adapter_copy: Path) -> None:
    _rewrite(adapter_copy, lambda f: f.peft_config.__setitem__("r", -1))
    with pytest.raises(AdapterFileError, match=r"options recorded.*not valid for method 'lora'.*r=-1"):
        load_adapter(make_model("bert"), adapter_copy)


def test_invalid_option_recorded_only_in_peftkit_json(adapter_copy: Path) -> None:
    _rewrite(adapter_copy, lambda f: f.meta["options"].__setitem__("bias", "everything"))
    with pytest.raises(AdapterFileError, match=r"options recorded.*bias='everything'"):
        load_adapter(make_model("bert"), adapter_copy)


def test_adalora_rank_pattern_must_fit_the_weights(tmp_path: Path) -> None:
    import copy

    original = read_adapter_dir(save_adapter(trained("llama", "adalora"), tmp_path / "a"))
    key, mask = next(iter(original.peft_config["rank_pattern"].items()))
    flipped = [not mask[0], *mask[1:]]
    for bad, message in ((flipped, rf"rank_pattern\['{key}'\] keeps"), ([True], "init_r=6 booleans")):
        config = copy.deepcopy(original.peft_config)
        config["rank_pattern"][key] = bad
        write_adapter_dir(tmp_path / "bad", config, original.meta, original.tensors)
        with pytest.raises(AdapterFileError, match=message):
            read_adapter_dir(tmp_path / "bad")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o027, 0o750)])
def test_saved_adapter_directory_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Like any directory the user creates (the temp directory it is renamed from is private)."""
    previous = os.umask(umask)
    try:
        target = save_adapter(trained("bert", "lora"), tmp_path / "adapter")
        save_adapter(trained("bert", "lora", adapter_seed=1), target)  # replacing keeps it readable too
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == mode
    assert (target / "peftkit.json").stat().st_mode & 0o777 == mode & 0o666
