"""The adapter directory: what is in it, how it is written and how it is read back and checked.

::

    my-adapter/
      adapter_config.json        peft's config, exactly as peft writes it (peft loads the methods it has)
      adapter_model.safetensors  the method's weights + trainable head weights, keyed as in peft
                                 (base_model.model.<module>.lora_A.weight, base_model.model.classifier.weight)
      peftkit.json               peftkit's own metadata: format version, method, options, targets,
                                 heads (num_labels, id2label), base fingerprint, plugin package,
                                 versions, SHA-256 of the weights file

peftkit's metadata lives in its own file so that peft, which rejects unknown keys in
``adapter_config.json`` for some methods, reads the directory unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
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
from peftkit.io.peft_format import options_from_peft_config
from peftkit.registry import (
    PEFT_KEY_PREFIX,
    MethodSpec,
    TensorLayout,
    get_method,
    method_for_peft_config,
    method_specs,
)

logger = logging.getLogger(__name__)

#: Version of the peftkit.json layout written by this peftkit; newer versions are refused.
FORMAT_VERSION = 1


@dataclass
class AdapterFiles:
    """The validated content of an adapter directory.

    Attributes:
        path: The directory.
        peft_config: ``adapter_config.json`` (peft's config).
        meta: ``peftkit.json`` (empty for a directory written by peft itself).
        tensors: Tensor name (key in the file) -> CPU tensor, checked for truncation, corruption,
            checksum, dtype, finite values and for fitting the recorded method.

    """

    path: Path
    peft_config: dict[str, Any]
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def method(self) -> str:
        """The method name (from ``peftkit.json``, else the method claiming peft's config)."""
        method = self.meta.get("method")
        if isinstance(method, str) and method:
            return method
        spec = method_for_peft_config(self.peft_config)
        if spec is not None:
            return spec.name
        supported = sorted({t for s in method_specs() if s.interop is not None for t in (s.peft_type,)})
        raise AdapterFileError(
            f"{str(self.path)!r} has no {META_FILE} and its {CONFIG_FILE} has "
            f"peft_type={self.peft_config.get('peft_type')!r}, which peftkit cannot load (peft types it reads: "
            f"{', '.join(supported)})."
        )

    @functools.cached_property
    def spec(self) -> MethodSpec | None:
        """The installed method's spec (``None`` if it comes from a plugin that is not installed)."""
        try:
            return get_method(self.method)
        except UnknownMethodError:
            return None

    @property
    def layout(self) -> TensorLayout | None:
        """Where the method's tensors are (``None`` for plugins that declare no layout)."""
        return self.spec.layout if self.spec is not None else None

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
        layout = self.layout
        modules = {
            key[len(PEFT_KEY_PREFIX) :].rsplit(".", 1)[0]
            for key in self.tensors
            if layout is not None and not layout.owns(key) and key.startswith(PEFT_KEY_PREFIX)
        }
        return sorted(modules)

    @property
    def targets(self) -> list[str]:
        """Full names of the adapted modules."""
        if isinstance(self.meta.get("targets"), list):
            return list(self.meta["targets"])
        if self.spec is not None and not self.spec.uses_targets:
            return []
        layout = self.layout
        found = {layout.module_of(key) for key in self.tensors} if layout is not None else set()
        return sorted(m for m in found if m is not None)

    @property
    def options(self) -> dict[str, Any]:
        """Method options (without ``target_modules`` / ``head_modules``).

        ``peftkit.json``'s options, overridden by what ``adapter_config.json`` records where the two
        differ (someone edited it; peft would read the edited values, and so does peftkit).
        """
        recorded = dict(self.meta["options"]) if isinstance(self.meta.get("options"), dict) else {}
        if self.spec is None:
            return recorded
        return {**recorded, **options_from_peft_config(self.spec, self.peft_config)}

    def edited_options(self) -> dict[str, tuple[Any, Any]]:
        """Options whose ``adapter_config.json`` value differs from ``peftkit.json``'s: name -> (recorded, used)."""
        recorded = self.meta.get("options")
        if not isinstance(recorded, dict) or self.spec is None:
            return {}
        read = options_from_peft_config(self.spec, self.peft_config)
        # None recorded means "the default chosen at wrap time", which adapter_config.json spells out
        return {
            k: (recorded[k], v) for k, v in read.items() if recorded.get(k) is not None and recorded[k] != v
        }

    def method_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that are not task-head weights."""
        heads = tuple(PEFT_KEY_PREFIX + head + "." for head in self.heads)
        return {k: v for k, v in self.tensors.items() if not k.startswith(heads)}

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The task-head weights."""
        heads = tuple(PEFT_KEY_PREFIX + head + "." for head in self.heads)
        return {k: v for k, v in self.tensors.items() if k.startswith(heads)}

    def num_parameters(self) -> int:
        """Number of stored values."""
        return sum(t.numel() for t in self.tensors.values())


def write_adapter_dir(
    path: str | os.PathLike[str],
    peft_config: dict[str, Any],
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    key_to_file: Callable[[str], str] | None = None,
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
        tensors: Tensor name (live peft key) -> tensor.
        key_to_file: Renames keys for the file (the method's :class:`~peftkit.registry.TensorLayout`).

    Returns:
        The directory.

    Raises:
        AdapterFileError: On empty, non-tensor or non-finite inputs, or if ``path`` is a file.

    """
    if not tensors or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise AdapterFileError("write_adapter_dir needs a non-empty dict of tensor name -> torch.Tensor.")
    broken = next(
        (key for key, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())),
        None,
    )
    if broken is not None:
        raise AdapterFileError(
            f"Refusing to write an adapter to {str(path)!r}: tensor {broken!r} holds NaN or infinite values, so "
            "every output would be NaN (a diverged run, or inputs that were not finite). Nothing was written."
        )
    if key_to_file is not None:
        tensors = {key_to_file(key): tensor for key, tensor in tensors.items()}
    weights = tensors_to_bytes(tensors, metadata={"format": "pt"})
    meta = {"format_version": FORMAT_VERSION, **meta}
    meta["files"] = {WEIGHTS_FILE: {"sha256": sha256_hex(weights), "bytes": len(weights)}}
    files = {WEIGHTS_FILE: weights, CONFIG_FILE: json_to_bytes(peft_config), META_FILE: json_to_bytes(meta)}
    target = atomic_write_dir(path, files)
    logger.info("Saved adapter (%d tensors, %d bytes) to %s", len(tensors), len(weights), target)
    return target


def read_adapter_dir(path: str | os.PathLike[str]) -> AdapterFiles:
    """Read and validate an adapter directory written by peftkit (or by peft, for the methods peft has).

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
    layout = files.layout if _method_known(files) else None
    if layout is not None and layout.from_file is not None:  # inside peftkit, keys are the live ones
        files.tensors = {layout.live_key(key): tensor for key, tensor in tensors.items()}
    _check_derived(files)
    _check_tensors(files)
    _check_options(files)
    return files


def _method_known(files: AdapterFiles) -> bool:
    try:
        files.method  # noqa: B018
    except AdapterFileError:
        return False  # reported by _check_derived, naming the directory
    return True


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
    """The options must build the method's config (what load, merge and inspect rely on)."""
    spec = files.spec
    if spec is None:
        return  # plugin not installed: load_adapter names the package, inspect still describes the files
    try:
        spec.config_cls.from_options(
            {**files.options, "target_modules": files.targets or None, "head_modules": files.heads}
        )
    except InvalidOptionError as exc:
        raise AdapterFileError(
            f"The options recorded in {str(files.path)!r} are not valid for method {spec.name!r} in this version "
            f"({exc}). The adapter was saved by peftkit {files.meta.get('peftkit_version', '?')} (or by peft); "
            "load it with that version, or re-save it."
        ) from None
    for name, (recorded, used) in files.edited_options().items():
        logger.warning(
            "%s: %s sets %s=%r where %s recorded %r (the file was edited after saving); using %r, as peft does.",
            files.path,
            CONFIG_FILE,
            name,
            used,
            META_FILE,
            recorded,
            used,
        )


def _check_tensors(files: AdapterFiles) -> None:
    weights = repr(str(files.path / WEIGHTS_FILE))
    if not files.tensors:
        raise AdapterFileError(f"{weights} holds no tensors; re-save the adapter.")
    layout = files.layout
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
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(
                f"{weights}: tensor {key!r} holds NaN or infinite values, so every output would be NaN. The adapter "
                "was saved from a diverged run: use an earlier checkpoint or retrain with a lower learning rate."
            )
    spec = files.spec
    if spec is None:
        return
    declared = files.peft_config.get("peft_type")
    if files.meta and declared not in (spec.peft_type, *spec.legacy_peft_types):
        raise AdapterFileError(
            f"{str(files.path)!r} is inconsistent: {META_FILE} says method {spec.name!r} but {CONFIG_FILE} says "
            f"peft_type={declared!r} (expected {spec.peft_type!r}). Re-save the adapter."
        )
    if spec.files.check is not None:
        spec.files.check(files)
    if layout is None:
        return  # a plugin without a declared layout: its tensor names are checked against the model
    heads = tuple(PEFT_KEY_PREFIX + head + "." for head in files.heads)
    owned = [key for key in files.tensors if layout.owns(key)]
    strays = [key for key in files.tensors if not layout.owns(key) and not key.startswith(heads)]
    if strays or not owned:
        example = strays[0] if strays else next(iter(files.tensors))
        guess = _closest_method(files, example)
        hint = f" it looks like a {guess!r} adapter." if guess else " it fits no installed method."
        raise AdapterFileError(
            f"{weights} does not fit the method {spec.name!r} recorded in the config: tensor {example!r} is not a "
            f"{spec.name!r} weight nor a head weight;{hint} The config and the weights belong to different adapters: "
            "re-save the adapter."
        )


def _closest_method(files: AdapterFiles, example: str) -> str | None:
    """The installed method whose layout owns ``example`` and most of the file's keys (fewest names on a tie)."""
    candidates = [s for s in method_specs() if s.layout is not None and s.layout.owns(example)]
    if not candidates:
        return None
    owned = {s.name: sum(s.layout.owns(key) for key in files.tensors) for s in candidates}
    return min(candidates, key=lambda s: (-owned[s.name], len(s.layout.names))).name
