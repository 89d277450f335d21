"""Shapes of the fields peftkit reads from ``peftkit.json`` and ``adapter_config.json``.

A hand-edited or damaged JSON file whose fields have the wrong type (``"targets": "query"``,
``"files": [1]``, ``"id2label": {"a": 1}``) is refused with an
:class:`~peftkit.errors.AdapterFileError` naming the file and the field, instead of failing
later with a ``TypeError`` deep inside loading, merging or ``peftkit inspect``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftkit.errors import AdapterFileError
from peftkit.io.paths import CONFIG_FILE, META_FILE


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _files_ok(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("sha256", ""), str) for entry in value.values()
    )


def _heads_ok(value: Any) -> bool:
    if not isinstance(value, dict) or not _is_str_list(value.get("modules", [])):
        return False
    labels = value.get("id2label")
    labels_ok = labels is None or (
        isinstance(labels, dict)
        and all(k.lstrip("-").isdigit() and isinstance(v, str) for k, v in labels.items())
    )
    return labels_ok and (value.get("num_labels") is None or _is_int(value["num_labels"]))


#: Shapes of the fields peftkit reads from its JSON files (a field may be absent).
_META_FIELDS: dict[str, tuple[Any, str]] = {
    "method": (lambda v: isinstance(v, str) and bool(v), "a method name"),
    "plugin": (lambda v: v is None or isinstance(v, str), "a package name or null"),
    "options": (lambda v: isinstance(v, dict), "a mapping of options"),
    "targets": (_is_str_list, "a list of module names"),
    "base": (lambda v: v is None or isinstance(v, dict), "a fingerprint mapping or null"),
    "files": (_files_ok, "a mapping of file name -> {sha256: ...}"),
    "heads": (_heads_ok, "a mapping with modules (names), num_labels (integer), id2label (index -> label)"),
}
_PEFT_FIELDS: dict[str, tuple[Any, str]] = {
    "peft_type": (lambda v: isinstance(v, str), "a string such as 'LORA'"),
    "rank_pattern": (lambda v: v is None or isinstance(v, dict), "a mapping or null"),
    "target_modules": (lambda v: v is None or isinstance(v, str) or _is_str_list(v), "module names"),
}


def check_json_types(directory: Path, peft_config: dict[str, Any], meta: dict[str, Any]) -> None:
    """Refuse JSON files whose fields have the wrong shape, naming the file and the field.

    Args:
        directory: The adapter directory (for messages).
        peft_config: Content of ``adapter_config.json``.
        meta: Content of ``peftkit.json`` (empty for a directory written by peft).

    Raises:
        AdapterFileError: A field peftkit reads has the wrong type.

    """
    for name, obj, fields in ((CONFIG_FILE, peft_config, _PEFT_FIELDS), (META_FILE, meta, _META_FIELDS)):
        for key, (valid, expected) in fields.items():
            if key in obj and not valid(obj[key]):
                shown = repr(obj[key])
                shown = shown if len(shown) <= 200 else shown[:200] + "..."
                raise AdapterFileError(
                    f"{str(directory / name)!r}: {key!r} must be {expected}, got {shown}; the file is corrupted "
                    "or was edited by hand. Re-save the adapter."
                )
