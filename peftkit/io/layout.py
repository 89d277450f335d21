"""The adapter directory: what is in it, how it is written and how it is read back and checked.

::

    my-adapter/
      adapter_config.json        peft's config, exactly as peft writes it (peft can load LoRA/AdaLoRA dirs)
      adapter_model.safetensors  the method's weights + trainable head weights, keyed as in peft
                                 (base_model.model.<module>.lora_A.weight, base_model.model.classifier.weight)
      peftkit.json               peftkit's own metadata: format version, method, options, targets,
                                 heads (num_labels, id2label), base fingerprint, plugin package,
                                 versions, SHA-256 of the weights file

peftkit's metadata lives in its own file so that peft, which rejects unknown keys in
``adapter_config.json`` for some methods, reads the directory unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftkit.errors import AdapterFileError, InvalidOptionError, UnknownMethodError
from peftkit.io.files import (
    atomic_write_dir,
    json_to_bytes,
    read_json,
    read_safetensors,
    sha256_hex,
    tensors_to_bytes,
)
from peftkit.io.json_schema import check_json_types
from peftkit.io.paths import CONFIG_FILE, META_FILE, WEIGHTS_FILE, check_adapter_dir
from peftkit.io.peft_format import PEFT_TYPE_TO_METHOD, options_from_peft_config
from peftkit.registry import get_method
from peftkit.state import PEFT_KEY_PREFIX

logger = logging.getLogger(__name__)

#: Version of the peftkit.json layout written by this peftkit; newer versions are refused.
FORMAT_VERSION = 1

#: Tensor-name patterns of the built-in methods (group 1 ends at the adapted module's name).
METHOD_KEY_PATTERNS: dict[str, re.Pattern[str]] = {
    "lora": re.compile(r"^(.*)\.(lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$"),
    "adalora": re.compile(r"^(.*)\.(lora_A|lora_B|lora_E)$"),
    "adapter": re.compile(r"^(.*)\.(adapter_down|adapter_up|adapter_norm)\.(weight|bias)$"),
}
_BUILTIN_PEFT_TYPES = {method: peft_type for peft_type, method in PEFT_TYPE_TO_METHOD.items()}


@dataclass
class AdapterFiles:
    """The validated content of an adapter directory.

    Attributes:
        path: The directory.
        peft_config: ``adapter_config.json`` (peft's config).
        meta: ``peftkit.json`` (empty for a directory written by peft itself).
        tensors: Tensor name (peft key) -> CPU tensor, checked for truncation, corruption,
            checksum, dtype and for fitting the recorded method.

    """

    path: Path
    peft_config: dict[str, Any]
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def method(self) -> str:
        """The method name (from ``peftkit.json``, else from peft's ``peft_type``)."""
        method = self.meta.get("method")
        if isinstance(method, str) and method:
            return method
        peft_type = str(self.peft_config.get("peft_type", ""))
        if peft_type in PEFT_TYPE_TO_METHOD:
            return PEFT_TYPE_TO_METHOD[peft_type]
        raise AdapterFileError(
            f"{str(self.path)!r} has no {META_FILE} and its {CONFIG_FILE} has peft_type={peft_type!r}, which peftkit "
            f"cannot load (supported: {', '.join(sorted(PEFT_TYPE_TO_METHOD))})."
        )

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """Fingerprint of the base the adapter was trained on (``None`` for peft-written dirs)."""
        base = self.meta.get("base")
        return base if isinstance(base, dict) else None

    @property
    def plugin(self) -> str | None:
        """Package providing a non-built-in method, as recorded at save time."""
        return self.meta.get("plugin")

    @property
    def heads(self) -> list[str]:
        """Task-head modules whose weights are in the file."""
        info = self.meta.get("heads")
        if isinstance(info, dict) and isinstance(info.get("modules"), list):
            return list(info["modules"])
        pattern = METHOD_KEY_PATTERNS.get(self.method)
        modules = {
            key[len(PEFT_KEY_PREFIX) :].rsplit(".", 1)[0]
            for key in self.tensors
            if pattern is not None and not pattern.match(key)
        }
        return sorted(modules)

    @property
    def targets(self) -> list[str]:
        """Full names of the adapted modules."""
        if isinstance(self.meta.get("targets"), list):
            return list(self.meta["targets"])
        pattern = METHOD_KEY_PATTERNS.get(self.method)
        found = {
            m.group(1)[len(PEFT_KEY_PREFIX) :]
            for key in self.tensors
            if pattern and (m := pattern.match(key))
        }
        return sorted(found)

    @property
    def options(self) -> dict[str, Any]:
        """Method options (``target_modules`` / ``head_modules`` included)."""
        if isinstance(self.meta.get("options"), dict):
            return dict(self.meta["options"])
        return options_from_peft_config(self.peft_config, self.method, self.heads)

    @property
    def rank_pattern(self) -> dict[str, list[bool]] | None:
        """AdaLoRA's saved rank pattern (``<module>.lora_E`` -> kept-rank mask), if any."""
        return self.peft_config.get("rank_pattern") or None

    def num_parameters(self) -> int:
        """Number of stored values."""
        return sum(t.numel() for t in self.tensors.values())


def write_adapter_dir(
    path: str | os.PathLike[str],
    peft_config: dict[str, Any],
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> Path:
    """Write an adapter directory atomically.

    The files are written to a temporary directory next to ``path``, fsync'ed, and moved into
    place with :func:`os.replace`; an existing adapter at ``path`` stays intact until the new one
    is complete, and nothing partial is left behind if anything fails. ``peftkit.json`` gets the
    format version and the SHA-256 of the weights file.

    Args:
        path: Target directory (created, or replaced if it holds an adapter).
        peft_config: Content of ``adapter_config.json``.
        meta: Content of ``peftkit.json`` (not modified; a copy is extended).
        tensors: Tensor name (peft key) -> tensor.

    Returns:
        The directory.

    Raises:
        AdapterFileError: On empty or non-tensor inputs, or if ``path`` is a file.

    """
    if not tensors or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise AdapterFileError("write_adapter_dir needs a non-empty dict of tensor name -> torch.Tensor.")
    weights = tensors_to_bytes(tensors, metadata={"format": "pt"})
    meta = {"format_version": FORMAT_VERSION, **meta}
    meta["files"] = {WEIGHTS_FILE: {"sha256": sha256_hex(weights), "bytes": len(weights)}}
    files = {WEIGHTS_FILE: weights, CONFIG_FILE: json_to_bytes(peft_config), META_FILE: json_to_bytes(meta)}
    target = atomic_write_dir(path, files)
    logger.info("Saved adapter (%d tensors, %d bytes) to %s", len(tensors), len(weights), target)
    return target


def read_adapter_dir(path: str | os.PathLike[str]) -> AdapterFiles:
    """Read and validate an adapter directory written by peftkit (or by peft: LoRA / AdaLoRA).

    Checks: the files exist and parse; the format version is one this peftkit understands; the
    weights file is intact (header, sizes, SHA-256 recorded at save time); every tensor is a
    floating-point tensor whose name fits the recorded method. Shapes are checked against the
    model by :func:`peftkit.load_adapter`.

    Args:
        path: The adapter directory.

    Returns:
        An :class:`AdapterFiles`.

    Raises:
        AdapterFileError: Naming the file (and tensor) at fault and how to fix it.

    """
    directory = check_adapter_dir(path)
    peft_config = read_json(directory / CONFIG_FILE)
    meta = read_json(directory / META_FILE) if (directory / META_FILE).exists() else {}
    _check_format_version(directory, meta)
    check_json_types(directory, peft_config, meta)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.exists() and (directory / "adapter_model.bin").exists():
        raise AdapterFileError(
            f"{str(directory)!r} holds a pickled adapter_model.bin, which peftkit never unpickles. Re-save it as "
            "safetensors with peft (model.save_pretrained(dir, safe_serialization=True))."
        )
    checksum = (meta.get("files") or {}).get(WEIGHTS_FILE, {}).get("sha256")
    tensors = read_safetensors(weights_path, expected_sha256=checksum)
    files = AdapterFiles(path=directory, peft_config=peft_config, meta=meta, tensors=tensors)
    _check_derived(files)
    _check_tensors(files)
    _check_options(files)
    return files


def _check_format_version(directory: Path, meta: dict[str, Any]) -> None:
    if not meta:
        return
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AdapterFileError(
            f"{str(directory / META_FILE)!r} has an invalid format_version {version!r}; the file is corrupted."
        )
    if version > FORMAT_VERSION:
        raise AdapterFileError(
            f"{str(directory)!r} was written by a newer peftkit (format version {version}; this peftkit "
            f"reads up to {FORMAT_VERSION}, written by peftkit {meta.get('peftkit_version', '?')}). "
            "Upgrade peftkit: pip install -U peftkit."
        )


def _check_derived(files: AdapterFiles) -> None:
    """Compute what loading reads from the configs, so that junk fails here and names the directory."""
    try:
        files.targets, files.heads, files.options  # noqa: B018
    except AdapterFileError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise AdapterFileError(
            f"{str(files.path)!r}: the options in {CONFIG_FILE} cannot be read ({type(exc).__name__}: {exc}); the "
            "file is corrupted. Re-save the adapter."
        ) from None


def _check_options(files: AdapterFiles) -> None:
    """The recorded options must build the method's config (what load, merge and inspect rely on)."""
    try:
        spec = get_method(files.method)
    except UnknownMethodError:
        return  # plugin not installed: load_adapter names the package, inspect still describes the files
    try:
        spec.config_cls.from_options(
            {**files.options, "target_modules": files.targets, "head_modules": files.heads}
        )
    except InvalidOptionError as exc:
        raise AdapterFileError(
            f"The options recorded in {str(files.path)!r} are not valid for method {spec.name!r} in this version "
            f"({exc}). The adapter was saved by peftkit {files.meta.get('peftkit_version', '?')} (or by peft); "
            "load it with that version, or re-save it."
        ) from None


def _check_tensors(files: AdapterFiles) -> None:
    weights = repr(str(files.path / WEIGHTS_FILE))
    if not files.tensors:
        raise AdapterFileError(f"{weights} holds no tensors; re-save the adapter.")
    for key, tensor in files.tensors.items():
        if not key.startswith(PEFT_KEY_PREFIX):
            raise AdapterFileError(
                f"{weights}: tensor {key!r} does not start with {PEFT_KEY_PREFIX!r}; this is not a peft/peftkit "
                "adapter file."
            )
        if not torch.is_floating_point(tensor):
            raise AdapterFileError(
                f"{weights}: tensor {key!r} has dtype {tensor.dtype}; adapter weights must be floating point "
                "(float32/float16/bfloat16). The file is corrupted or not an adapter."
            )
    method = files.method
    declared = files.peft_config.get("peft_type")
    if files.meta and method in _BUILTIN_PEFT_TYPES and declared != _BUILTIN_PEFT_TYPES[method]:
        raise AdapterFileError(
            f"{str(files.path)!r} is inconsistent: {META_FILE} says method {method!r} but {CONFIG_FILE} says "
            f"peft_type={declared!r} (expected {_BUILTIN_PEFT_TYPES[method]!r}). Re-save the adapter."
        )
    if method == "adalora" and files.rank_pattern:
        _check_rank_pattern(files)
    pattern = METHOD_KEY_PATTERNS.get(method)
    if pattern is None:
        return  # plugin method: its tensor names are checked against the model after injection
    heads = tuple(PEFT_KEY_PREFIX + head + "." for head in files.heads)
    method_keys = [key for key in files.tensors if pattern.match(key)]
    strays = [key for key in files.tensors if not pattern.match(key) and not key.startswith(heads)]
    if strays or not method_keys:
        example = strays[0] if strays else next(iter(files.tensors))
        guess = next((m for m, p in METHOD_KEY_PATTERNS.items() if p.match(example)), None)
        hint = f" it looks like a {guess!r} adapter." if guess else " it fits no built-in method."
        raise AdapterFileError(
            f"{weights} does not fit the method {method!r} recorded in the config: tensor {example!r} is not a "
            f"{method!r} weight nor a head weight;{hint} The config and the weights belong to different adapters: "
            "re-save the adapter."
        )


def _check_rank_pattern(files: AdapterFiles) -> None:
    """AdaLoRA: every mask has ``init_r`` booleans and keeps as many ranks as ``lora_E`` has rows."""
    where = repr(str(files.path / CONFIG_FILE))
    init_r = files.options.get("init_r")
    for key, mask in files.rank_pattern.items():
        module = key.rsplit(".", 1)[0]
        e_key = f"{PEFT_KEY_PREFIX}{module}.lora_E"
        valid = isinstance(mask, list) and all(isinstance(v, bool) for v in mask)
        if not valid or (isinstance(init_r, int) and len(mask) != init_r):
            raise AdapterFileError(
                f"{where}: rank_pattern[{key!r}] must be a list of init_r={init_r} booleans, got {mask!r}; "
                "the file is corrupted. Re-save the adapter."
            )
        if e_key not in files.tensors:
            raise AdapterFileError(
                f"{where}: rank_pattern names {key!r}, but the weights have no tensor {e_key!r}."
            )
        if files.tensors[e_key].shape[0] != sum(mask):
            raise AdapterFileError(
                f"{where}: rank_pattern[{key!r}] keeps {sum(mask)} ranks but tensor {e_key!r} has "
                f"{files.tensors[e_key].shape[0]}; the config and the weights do not belong together."
            )
