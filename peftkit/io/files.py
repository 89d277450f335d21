"""Low-level file handling for adapter directories: atomic directory writes and safe reads.

Nothing here ever unpickles: weights are read from safetensors (whose JSON header is checked by
hand first, so that a damaged file is reported with the name of the file *and* of the tensor),
configs from JSON.

Atomic write protocol (:func:`atomic_write_dir`)::

    parent/.NAME.tmp-HOST-PID-XXXX/   <- every file written and fsync'ed here first
    parent/NAME                       <- Linux: swapped with the temp dir in one renameat2(RENAME_EXCHANGE),
                                         the old adapter (now in the temp dir) deleted; elsewhere: old
                                         adapter moved aside to parent/.NAME.old-HOST-PID-XXXX, temp dir
                                         renamed into place

An existing adapter is only touched once the new one is complete on disk; an exception (or a
``kill -9``) at any point leaves either the old or the new adapter at ``NAME``, never a mix or
nothing. A failed write (no space left, ...) raises :class:`~peftkit.errors.AdapterWriteError`.
Temp directories that a killed process left beside ``NAME`` (their process on this host is gone)
are deleted after the next successful save to ``NAME`` (:func:`remove_stale_temp_dirs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from peftkit.errors import AdapterFileError, AdapterWriteError, PeftkitError
from peftkit.io.paths import ADAPTER_FILES, META_FILE

logger = logging.getLogger(__name__)

#: ``config.json`` attribute where ``peftkit merge`` lists the checksums of the adapters folded in.
MERGED_ADAPTERS_ATTR = "peftkit_merged_adapters"

#: Bytes per element of each safetensors dtype code.
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors to safetensors bytes (CPU, contiguous copies; shared storage is fine)."""
    prepared = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    return safetensors_save(prepared, metadata=metadata)


def json_to_bytes(obj: Any) -> bytes:
    """Serialise ``obj`` as indented, key-sorted JSON (the way peft writes ``adapter_config.json``)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_dir(path: str | os.PathLike[str], files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (name -> content) as the directory ``path``, atomically.

    The files are written to a temporary directory beside ``path``, which then replaces ``path`` in
    one rename: a reader (or a crash) sees the old adapter or the new one, never a mix. Other
    files already in ``path`` (e.g. a tokenizer saved next to the adapter) are carried over as
    hard links (copies where the file system has none), so they survive the swap unchanged.

    Args:
        path: Target directory.
        files: File name -> bytes. Written in this order.

    Returns:
        The target directory as a :class:`~pathlib.Path`.

    Raises:
        AdapterFileError: If ``path`` exists and is not a directory.

    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise AdapterFileError(
            f"Cannot save the adapter to {str(target)!r}: it is a file. Pass a directory path (it is created)."
        )
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_and_publish(target, files)
    except OSError as exc:
        if isinstance(exc, PeftkitError):
            raise
        kept = "the previous adapter there is intact" if existed else "no partial adapter was left there"
        where = f" ({exc.filename})" if exc.filename else ""
        raise AdapterWriteError.wrap(
            f"Cannot save the adapter to {str(target)!r}: {exc.strerror or exc}{where}. Nothing was changed: "
            f"{kept}. Free some disk space (or fix the permissions) and save again, or save elsewhere.",
            exc,
        ) from exc
    return target


def temp_dir_beside(target: Path, kind: str = "tmp") -> Path:
    """Create an empty hidden directory next to ``target``, named after it and this process.

    The name ``.NAME.KIND-HOST-PID-XXXX`` lets :func:`remove_stale_temp_dirs` recognise it as
    abandoned once this process is gone.
    """
    prefix = f".{target.name}.{kind}-{_host_tag()}-{os.getpid()}-"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    os.chmod(path, _directory_mode())  # mkdtemp makes it private (0700); it becomes the published directory
    return path


def _directory_mode() -> int:
    """The mode ``mkdir`` would give a new directory under the current umask."""
    return 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(directory: Path) -> None:
    """Give every file under ``directory`` the mode ``open()`` would under the umask (``0o666 & ~umask``).

    Libraries that write through private temporary files (transformers' ``save_pretrained`` leaves
    ``model.safetensors`` at 0600) would otherwise publish files other users cannot read, unlike the
    adapter files peftkit writes itself.
    """
    mode = 0o666 & ~_umask()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def remove_stale_temp_dirs(target: Path) -> list[Path]:
    """Delete the temp directories beside ``target`` whose writing process (on this host) is gone.

    Call it once ``target`` holds a complete new version: what a ``kill -9`` left behind is then
    obsolete. Directories of live processes, of other hosts and anything else are left alone.

    Returns:
        The directories removed.

    """
    if os.name != "posix":  # liveness is checked with kill(pid, 0)
        return []
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-{re.escape(_host_tag())}-(\d+)-[^/]+")
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match and entry.is_dir() and not entry.is_symlink() and not _process_alive(int(match[1])):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    if removed:
        logger.info("Removed %d temp dir(s) left beside %s by interrupted saves", len(removed), target)
    return removed


@functools.cache
def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:64] or "host"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, under another user
        return True
    return True


def _write_and_publish(target: Path, files: Mapping[str, bytes]) -> None:
    tmp = temp_dir_beside(target)
    try:
        for name, data in files.items():
            write_file(tmp / name, data)
        if target.is_dir():
            _carry_over_foreign_entries(target, tmp)
        _fsync_dir(tmp)
        if not target.exists():
            os.replace(tmp, target)
        elif not _exchange(
            tmp, target
        ):  # no atomic swap here: two renames (a crash between them is reported)
            old = temp_dir_beside(target, "old")
            os.replace(target, old)  # onto an empty dir: allowed by POSIX rename
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the temp dir, or after a swap the old adapter
    remove_stale_temp_dirs(target)


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` if unsupported."""
    function = _renameat2()
    if function is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _carry_over_foreign_entries(source: Path, destination: Path) -> None:
    """Link (or copy) every entry of ``source`` that is not an adapter file into ``destination``."""
    foreign = [entry for entry in source.iterdir() if entry.name not in ADAPTER_FILES]
    for entry in foreign:
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, destination / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, destination / entry.name)
    if foreign:
        logger.info("Kept %d other file(s) of %s next to the new adapter files.", len(foreign), source)


def _link_or_copy(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:  # no hard links on this file system
        shutil.copy2(source, destination)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``.

    Raises:
        AdapterFileError: If the file is missing, not UTF-8, not valid JSON or not an object.

    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdapterFileError(f"{str(path)!r} is missing.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdapterFileError(f"Cannot read {str(path)!r}: {exc}.") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterFileError(
            f"{str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the file is "
            "corrupted or was truncated. Re-save the adapter."
        ) from None
    except RecursionError:
        raise AdapterFileError(f"{str(path)!r} is not an adapter config: it is nested too deeply.") from None
    if not isinstance(obj, dict):
        raise AdapterFileError(f"{str(path)!r} must hold a JSON object, found {type(obj).__name__}.")
    return obj


def check_safetensors_header(path: Path, data: bytes) -> dict[str, dict[str, Any]]:
    """Validate the header of a safetensors file without trusting it.

    Args:
        path: File name (for messages).
        data: The whole file content.

    Returns:
        Tensor name -> header entry (``dtype``, ``shape``, ``data_offsets``).

    Raises:
        AdapterFileError: Naming the file and, where it applies, the tensor that is damaged.

    """
    where = repr(str(path))
    if len(data) < 8:
        raise AdapterFileError(f"{where} is truncated ({len(data)} bytes): re-save the adapter.")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise AdapterFileError(
            f"{where} is corrupted or truncated: its header claims {header_len} bytes but the file has "
            f"{len(data)} bytes. Re-save the adapter."
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AdapterFileError(
            f"{where} is corrupted: its safetensors header is not valid JSON ({exc}). Re-save the adapter."
        ) from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{where} is corrupted: its safetensors header is not a JSON object.")
    payload = len(data) - 8 - header_len
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    for name, entry in entries.items():
        _check_entry(where, name, entry, payload)
    return entries


def _check_entry(where: str, name: str, entry: Any, payload: int) -> None:
    prefix = f"{where}, tensor {name!r}:"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise AdapterFileError(f"{prefix} header entry is malformed ({entry!r}); the file is corrupted.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise AdapterFileError(f"{prefix} unknown dtype {dtype!r}; the file is corrupted.")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise AdapterFileError(f"{prefix} invalid shape {shape!r}; the file is corrupted.")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
    ):
        raise AdapterFileError(f"{prefix} invalid data offsets {offsets!r}; the file is corrupted.")
    begin, end = offsets
    if end > payload:
        raise AdapterFileError(
            f"{prefix} its data ends at byte {end} of the data section but the file holds only {payload} bytes: "
            "the file is truncated. Re-save the adapter."
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise AdapterFileError(
            f"{prefix} {end - begin} data bytes do not fit shape {shape} of {dtype} ({expected} bytes); "
            "the file is corrupted."
        )


def read_safetensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read and validate a safetensors file (header, sizes, optional checksum), never unpickling.

    Args:
        path: The ``.safetensors`` file.
        expected_sha256: Checksum recorded at save time; ``None`` skips the check.

    Returns:
        Tensor name -> CPU tensor.

    Raises:
        AdapterFileError: The file is missing, truncated, corrupted or does not match the checksum.

    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AdapterFileError(f"{str(path)!r} is missing.") from None
    except OSError as exc:
        raise AdapterFileError(f"Cannot read {str(path)!r}: {exc}.") from None
    check_safetensors_header(path, data)
    if expected_sha256 is not None and sha256_hex(data) != expected_sha256:
        raise AdapterFileError(
            f"{str(path)!r} does not match the SHA-256 checksum recorded in {META_FILE} at save time: the file "
            "is corrupted or was replaced after saving. Re-save the adapter; if you replaced the weights on "
            f"purpose, delete the 'files' entry from {META_FILE}."
        )
    try:
        return safetensors_load(data)
    except Exception as exc:  # safetensors raises its own error type for malformed files
        raise AdapterFileError(
            f"{str(path)!r} cannot be read as safetensors ({exc}); re-save the adapter."
        ) from None
