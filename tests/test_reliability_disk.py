"""Running out of disk while saving: a clear error naming the path, and the previous files intact.

Simulated with a writer raising ``OSError(ENOSPC)`` at each step of a save, and for real on a
64 KiB tmpfs (skipped where mounting is not permitted). The errors are
:class:`~peftkit.errors.AdapterWriteError` (an ``AdapterFileError``) and
:class:`~peftkit.errors.CheckpointWriteError` (a ``TrainingError``); both are also ``OSError`` with
the original ``errno``, so existing ``except OSError`` handlers keep working.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import accelerate.accelerator
import pytest
import torch
from torch.utils.data import DataLoader

import peftkit
from peftkit.config import TrainConfig
from peftkit.errors import AdapterFileError, AdapterWriteError, CheckpointWriteError, TrainingError
from peftkit.io import files as io_files
from peftkit.io import load_adapter, read_adapter_dir, save_adapter
from peftkit.training import build_accelerator, find_latest_checkpoint, reset_accelerate_state, train
from tests.tiny_models import make_batch, make_model

FILES = ["adapter_model.safetensors", "adapter_config.json", "peftkit.json"]


def lora_model(seed: int, r: int = 4) -> torch.nn.Module:
    base = make_model("bert")  # seeds torch with 0 itself
    torch.manual_seed(100 + seed)
    model = peftkit.wrap(base, "lora", r=r)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # non-zero, so two adapters differ in every tensor
    return model


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def full_disk_at(monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """Make writing ``failing`` (a file name) raise ENOSPC halfway, as a full disk would."""
    original = io_files.write_file

    def write(path: Path, data: bytes) -> None:
        if path.name == failing or path.name.startswith(f".{failing}.tmp-"):
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, data)

    monkeypatch.setattr(io_files, "write_file", write)


def check_write_error(error: BaseException, target: Path) -> None:
    assert isinstance(error, AdapterWriteError) and isinstance(error, AdapterFileError)
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    message = str(error)
    assert repr(str(target)) in message and "No space left on device" in message, message
    assert "Free some disk space" in message


@pytest.mark.parametrize("failing", FILES)
def test_full_disk_while_replacing_an_adapter_keeps_the_previous_one(tmp_path, monkeypatch, failing) -> None:
    target = save_adapter(lora_model(0), tmp_path / "adapter")
    before = snapshot(target)
    full_disk_at(monkeypatch, failing)
    with pytest.raises(OSError) as info:
        save_adapter(lora_model(1), target)
    check_write_error(info.value, target)
    assert "the previous adapter there is intact" in str(info.value)
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"], "no temporary directory left behind"
    monkeypatch.undo()
    load_adapter(make_model("bert"), target)


def test_full_disk_on_a_first_save_leaves_nothing(tmp_path, monkeypatch) -> None:
    full_disk_at(monkeypatch, "adapter_model.safetensors")
    with pytest.raises(AdapterWriteError) as info:
        save_adapter(lora_model(0), tmp_path / "new")
    check_write_error(info.value, tmp_path / "new")
    assert "no partial adapter was left" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_in_a_directory_with_other_files(tmp_path, monkeypatch) -> None:
    """A run directory with a tokenizer next to the adapter: also intact, tokenizer included."""
    target = save_adapter(lora_model(0), tmp_path / "run")
    (target / "tokenizer.json").write_text("{}")
    before = snapshot(target)
    full_disk_at(monkeypatch, "peftkit.json")
    with pytest.raises(AdapterWriteError) as info:
        save_adapter(lora_model(1), target)
    check_write_error(info.value, target)
    assert snapshot(target) == before, "no temporary file left, nothing replaced"


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch) -> None:
    real = accelerate.accelerator.save_accelerator_state
    calls = {"n": 0}

    def save_state(output_dir, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "optimizer.bin"))
        return real(output_dir, *args, **kwargs)

    monkeypatch.setattr(accelerate.accelerator, "save_accelerator_state", save_state)
    batch = make_batch("bert", batch=16, seq=6)
    data = [{k: v[i] for k, v in batch.items()} for i in range(16)]
    config = TrainConfig(output_dir=str(tmp_path), epochs=1, batch_size=4, checkpoint_every=2)
    reset_accelerate_state()
    try:
        with pytest.raises(TrainingError) as info:
            train(
                lora_model(0).train(),
                DataLoader(data, batch_size=4),
                config,
                accelerator=build_accelerator(config),
            )
    finally:
        reset_accelerate_state()
    error = info.value
    assert (
        isinstance(error, CheckpointWriteError) and isinstance(error, OSError) and error.errno == errno.ENOSPC
    )
    root = tmp_path / "checkpoints"
    message = str(error)
    assert str(root / "step-4") in message and "No space left on device" in message, message
    assert f"last complete checkpoint, {root / 'step-2'}, is intact" in message and "--resume" in message
    assert sorted(p.name for p in root.iterdir()) == ["step-2"]
    assert find_latest_checkpoint(root) == root / "step-2"


# ----------------------------------------------------------------------------------------------
# A real full disk: a 64 KiB tmpfs


@contextlib.contextmanager
def tiny_tmpfs(parent: Path, size: str = "64k") -> Iterator[Path]:
    mount_point = parent / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    mount = shutil.which("mount")
    result = (
        subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True
        )
        if mount
        else None
    )
    if result is None or result.returncode != 0:
        mount_point.rmdir()
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
        mount_point.rmdir()


def test_a_real_full_disk(tmp_path) -> None:
    first, second = lora_model(0, r=40), lora_model(1, r=40)  # ~45 KB each: one fits in 64 KiB, two do not
    with tiny_tmpfs(tmp_path) as disk:
        target = save_adapter(first, disk / "adapter")
        before = snapshot(target)
        with pytest.raises(AdapterWriteError) as info:
            save_adapter(second, target)
        assert info.value.errno == errno.ENOSPC
        assert repr(str(target)) in str(info.value) and "No space left on device" in str(info.value)
        assert snapshot(target) == before
        assert [p.name for p in disk.iterdir()] == ["adapter"], "the partial copy was removed"
        read_adapter_dir(target)
        shutil.rmtree(target)  # with the space back, the same save succeeds
        save_adapter(second, disk / "adapter")
        assert read_adapter_dir(disk / "adapter").meta["files"] != read_adapter_dir_meta(before)


def read_adapter_dir_meta(files: dict[str, bytes]) -> dict:
    import json

    return json.loads(files["peftkit.json"])["files"]
