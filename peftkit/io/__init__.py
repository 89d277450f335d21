"""Adapter files: saved apart from the base model, loaded back onto the right base only.

Public API::

    peftkit.save_adapter(model, "runs/ner")                  # adapter_config.json + safetensors + peftkit.json
    peftkit.load_adapter(base, "runs/ner", "ner")            # refuses another base (BaseModelMismatchError)
    peftkit.read_adapter_dir("runs/ner").tensors             # validated content, no model needed
    peftkit.base_fingerprint(base)                           # identity of a base model (fp32 == 8-bit)

Modules: :mod:`~peftkit.io.files` (atomic writes, safe reads), :mod:`~peftkit.io.layout` (the
directory format), :mod:`~peftkit.io.json_schema` (field types of the JSON files),
:mod:`~peftkit.io.fingerprint`, :mod:`~peftkit.io.peft_format` (peft's config, through each method's interop), :mod:`~peftkit.io.adapter_io` (save / load onto a model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftkit import _lazy
from peftkit.io.paths import CONFIG_FILE, META_FILE, WEIGHTS_FILE, check_adapter_dir

__getattr__, __dir__ = _lazy.install(
    __name__,
    {
        **dict.fromkeys(("load_adapter", "save_adapter"), "peftkit.io.adapter_io"),
        **dict.fromkeys(
            ("base_fingerprint", "describe_fingerprint", "fingerprints_match"), "peftkit.io.fingerprint"
        ),
        **dict.fromkeys(
            ("FORMAT_VERSION", "AdapterFiles", "read_adapter_dir", "write_adapter_dir"), "peftkit.io.layout"
        ),
    },
)

if TYPE_CHECKING:
    from peftkit.io.adapter_io import load_adapter, save_adapter
    from peftkit.io.fingerprint import base_fingerprint, describe_fingerprint, fingerprints_match
    from peftkit.io.layout import FORMAT_VERSION, AdapterFiles, read_adapter_dir, write_adapter_dir

__all__ = [
    "save_adapter",
    "load_adapter",
    "read_adapter_dir",
    "write_adapter_dir",
    "AdapterFiles",
    "base_fingerprint",
    "fingerprints_match",
    "describe_fingerprint",
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "META_FILE",
    "check_adapter_dir",
]
