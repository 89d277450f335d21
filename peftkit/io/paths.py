"""Names of an adapter directory's files and the first check of a path (standard library only).

Kept free of torch so that the command line can refuse a mistyped directory at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from peftkit.errors import AdapterFileError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "peftkit.json"
#: Files that make up an adapter directory (a directory holding only these may be replaced whole).
ADAPTER_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, META_FILE, "adapter_model.bin", "README.md"})


def check_adapter_dir(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if it looks like an adapter directory.

    Only the directory and its ``adapter_config.json`` are checked; reading it
    (:func:`peftkit.io.read_adapter_dir`) validates the rest.

    Raises:
        AdapterFileError: The path is missing, a file, or holds no adapter config; when a save
            into it was interrupted, the message names the hidden complete copies beside it.

    """
    directory = Path(path)
    if not directory.is_dir():
        raise AdapterFileError(_missing_dir_message(directory))
    if not (directory / CONFIG_FILE).exists():
        raise AdapterFileError(
            f"{str(directory)!r} is not an adapter directory: {CONFIG_FILE} is missing. Pass the directory that "
            "peftkit.save_adapter wrote."
        )
    return directory


def _missing_dir_message(directory: Path) -> str:
    message = f"Adapter directory {str(directory)!r} does not exist."
    if directory.is_file():
        return f"{str(directory)!r} is a file; pass the adapter directory that contains it."
    leftovers = (
        sorted(p.name for p in directory.parent.glob(f".{directory.name}.*-*"))
        if directory.parent.is_dir()
        else []
    )
    if leftovers:
        message += (
            f" A save into it was interrupted; complete copies may be in {', '.join(leftovers)} (in "
            f"{str(directory.parent)!r}): rename the one holding {META_FILE} to {directory.name!r}."
        )
    return message
