"""The results file: one JSON object, ``{"cells": {key: record}}``, rewritten atomically after each cell.

A record with ``"status": "ok"`` is finished and skipped by later runs; a ``"failed"`` one (with the
tail of the recipe's stderr) is retried.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peftkit.errors import ConfigError

FORMAT = 1


def load_results(path: Path) -> dict[str, Any]:
    """The results in ``path`` (an empty grid if the file does not exist).

    Raises:
        ConfigError: The file exists but is not a results file of this format.

    """
    if not path.exists():
        return {"format": FORMAT, "cells": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc}): pass another --results file or fix it."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise ConfigError(
            f"{path} has no 'cells' object: it is not a quality results file; pass another --results."
        )
    return data


def save_results(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def finished(data: dict[str, Any], key: str) -> bool:
    """Whether cell ``key`` has a successful record."""
    return data["cells"].get(key, {}).get("status") == "ok"
