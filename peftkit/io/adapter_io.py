"""Save an adapter apart from its base model, and load it back onto the right base only.

::

    save_adapter(model, dir)                      load_adapter(base, dir)
      adapter weights + head weights  ─┐            read_adapter_dir: files intact? method known?
      peft config (adapter_config)    ─┼─► dir ─►   base_fingerprint(base) == recorded?  (strict)
      peftkit.json (method, options,  ─┘            inject (wrap semantics) ─► check names/shapes
        targets, heads, base fingerprint)           ─► copy weights ─► set active; undo all on error
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftkit.errors import (
    AdapterFileError,
    AlreadyWrappedError,
    BaseModelMismatchError,
    InvalidOptionError,
    NotWrappedError,
    UnknownMethodError,
)
from peftkit.io.files import MERGED_ADAPTERS_ATTR
from peftkit.io.fingerprint import base_fingerprint, describe_fingerprint, fingerprints_match, mismatch_reason
from peftkit.io.layout import FORMAT_VERSION, AdapterFiles, read_adapter_dir, write_adapter_dir
from peftkit.io.paths import WEIGHTS_FILE
from peftkit.io.peft_format import build_peft_config
from peftkit.registry import MethodSpec, get_method
from peftkit.rollback import ModelSnapshot
from peftkit.state import (
    AdapterRecord,
    adapter_state_dict,
    get_state,
    peft_key_map,
    require_state,
    unwrap_model,
)

logger = logging.getLogger(__name__)

_SHOWN = 5


def save_adapter(model: nn.Module, path: str | os.PathLike[str], adapter_name: str | None = None) -> Path:
    """Save one adapter (its weights and the trainable head weights, never the base) to a directory.

    The directory is peft's layout (``adapter_config.json`` + ``adapter_model.safetensors``) plus
    ``peftkit.json`` with the method, its options, the adapted modules, the heads (with
    ``num_labels`` / ``id2label``), the plugin package of non-built-in methods and a
    fingerprint of the base model (see :func:`peftkit.base_fingerprint`). The
    directories of the methods peft has (LoRA, DoRA, AdaLoRA, IA³, prefix tuning) also load with
    ``peft.PeftModel.from_pretrained(base, path)``; a method may adjust the tensors first (AdaLoRA
    keeps only the ranks its budget kept, as peft does). The write is atomic: an existing
    adapter at ``path`` is replaced only once the new one is complete (in distributed training,
    call it on the main process only).

    Args:
        model: A model carrying a peftkit adapter (:func:`peftkit.wrap` / :func:`load_adapter`).
        path: Output directory (created; an existing adapter directory is replaced).
        adapter_name: Adapter to save; default: the active one.

    Returns:
        The adapter directory.

    Raises:
        NotWrappedError: The model has no adapter (of that name).

    Example:
        >>> peftkit.save_adapter(model, "runs/ner-lora")  # doctest: +SKIP
        PosixPath('runs/ner-lora')

    """
    inner = unwrap_model(model)
    state = require_state(inner)
    name = adapter_name if adapter_name is not None else state.active
    if name is None or name not in state.adapters:
        raise NotWrappedError(
            f"No adapter named {name!r} to save; adapters on this model: {', '.join(state.adapters)}. "
            "Pass adapter_name=... ."
        )
    record = state.adapters[name]
    spec = get_method(record.method)
    tensors = adapter_state_dict(inner, name)
    if spec.files.before_save is not None:
        tensors = spec.files.before_save(record, tensors)
    meta = _metadata(inner, record, spec)
    key_to_file = spec.layout.file_key if spec.layout is not None else None
    return write_adapter_dir(
        path, build_peft_config(inner, record, spec), meta, tensors, key_to_file=key_to_file
    )


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    name: str = "default",
    *,
    strict: bool = True,
    is_trainable: bool = False,
    adapter_name: str | None = None,
) -> nn.Module:
    """Load an adapter saved by :func:`save_adapter` (or by peft) onto a base model and activate it.

    **The base is checked.** The adapter directory records a fingerprint of the base it was
    trained on (architecture, parameter names and shapes, a hash of the never-quantised
    weights; see :func:`peftkit.base_fingerprint`). The fingerprint of ``model`` must match it,
    whether ``model`` was loaded in fp32 or 8-bit, so an adapter never loads silently onto
    another checkpoint, another size or another seed: that raises
    :class:`~peftkit.errors.BaseModelMismatchError` naming both models. ``strict=False`` turns
    the refusal into a warning (for deliberate transfers, e.g. onto a further fine-tuned base).

    The model may be a plain base (it is frozen and wrapped, like :func:`peftkit.wrap`) or
    already carry other adapters: the new one is added under ``adapter_name`` and becomes
    active; switch with :func:`peftkit.set_active`, compare with :func:`peftkit.disable_adapters`.
    If anything fails (damaged file, wrong shapes, ...) the model is left exactly as it was.

    Args:
        model: The base model (fp32 or 8-bit), plain or carrying peftkit adapters.
        path: Adapter directory.
        name: Name to load it under (must be unused on ``model``).
        strict: Refuse a different base and missing or unexpected tensors; ``False`` downgrades
            both to warnings. Damaged files and wrong shapes always raise.
        is_trainable: Leave the adapter's weights trainable (to continue training);
            by default they are frozen for inference.
        adapter_name: Alias of ``name``, spelled as in :func:`peftkit.wrap` and peft.

    Returns:
        The same model object, with the adapter active.

    Raises:
        AdapterFileError: The directory is missing, truncated, corrupted, from a newer peftkit,
            or does not fit the model (names the file and the tensor).
        BaseModelMismatchError: ``model`` is not the base the adapter was trained on (``strict``).
        UnknownMethodError: The adapter's method is not installed (names the plugin package).
        AlreadyWrappedError: ``adapter_name`` is taken, or the model has adapters injected by peft.

    Example:
        >>> base = AutoModelForTokenClassification.from_pretrained(path, num_labels=9)  # doctest: +SKIP
        >>> model = peftkit.load_adapter(base, "runs/ner-lora")  # doctest: +SKIP

    """
    if adapter_name is not None and adapter_name != name and name != "default":
        raise InvalidOptionError(
            f"load_adapter got name={name!r} and adapter_name={adapter_name!r}: pass only one of them."
        )
    adapter_name = adapter_name if adapter_name is not None else name
    files = read_adapter_dir(path)
    try:
        spec = get_method(files.method, plugin_hint=files.plugin)
    except UnknownMethodError as exc:
        raise UnknownMethodError(f"Cannot load the adapter in {str(files.path)!r}: {exc}") from None
    inner = unwrap_model(model)
    _check_not_foreign(inner)
    _check_base(inner, files, strict)
    options = {**files.options, "target_modules": files.targets or None, "head_modules": files.heads}
    try:
        config = spec.config_cls.from_options(options)
    except InvalidOptionError as exc:
        raise AdapterFileError(
            f"The options recorded in {str(files.path)!r} are not valid for method {spec.name!r} in this version "
            f"({exc}). The adapter was saved by peftkit {files.meta.get('peftkit_version', '?')} (or by peft); "
            "load it with that version."
        ) from None
    snapshot = ModelSnapshot(inner)
    try:
        from peftkit.wrap import inject, set_active

        inject(inner, spec, config, adapter_name)
        record = require_state(inner).adapters[adapter_name]
        if spec.files.after_inject is not None:
            spec.files.after_inject(record, files, is_trainable)
        _copy_weights(inner, files, adapter_name, strict)
        record.trainable = is_trainable
        set_active(inner, adapter_name)  # sets requires_grad of its weights from record.trainable
    except BaseException:
        snapshot.restore()
        raise
    known = {id(module) for module, _ in snapshot.training}
    for module in inner.modules():  # new layers (dropout!) follow the model's train/eval mode
        if id(module) not in known:
            module.training = inner.training
    _apply_labels(inner, files)
    record.metadata.update(loaded_from=str(files.path))
    logger.info("Loaded %s adapter %r from %s", files.method, adapter_name, files.path)
    return model


def _metadata(model: nn.Module, record: AdapterRecord, spec: MethodSpec) -> dict[str, Any]:
    from peftkit import __version__

    builtin = spec.source.startswith("peftkit")
    return {
        "format_version": FORMAT_VERSION,
        "peftkit_version": __version__,
        "method": spec.name,
        "peft_type": spec.peft_type,
        "plugin": None if builtin else spec.source,
        "adapter_name": record.name,
        "options": record.config.to_dict(),
        "targets": sorted(record.targets),
        "heads": _head_info(model, record.heads),
        "base": base_fingerprint(model),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }


def _head_info(model: nn.Module, heads: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {"modules": list(heads)}
    config = getattr(model, "config", None)
    if heads and config is not None:
        info["num_labels"] = getattr(config, "num_labels", None)
        id2label = getattr(config, "id2label", None)
        if id2label:
            info["id2label"] = {str(k): str(v) for k, v in id2label.items()}
    return info


def _check_not_foreign(model: nn.Module) -> None:
    state = get_state(model)
    if state is None or not state.adapters:
        if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            raise AlreadyWrappedError(
                "This model already contains peft adapter layers injected outside peftkit. Load the adapter onto "
                "a plain base model (or onto one wrapped by peftkit)."
            )


def _check_base(model: nn.Module, files: AdapterFiles, strict: bool) -> None:
    expected = files.fingerprint
    if expected is None:
        logger.warning(
            "%s records no base-model fingerprint (written by peft?): cannot verify that this is the right base "
            "(peft recorded base_model_name_or_path=%r).",
            files.path,
            files.peft_config.get("base_model_name_or_path"),
        )
        return
    actual = base_fingerprint(model)
    if fingerprints_match(expected, actual):
        _check_not_already_merged(model, files, strict)
        return
    message = (
        f"The adapter in {str(files.path)!r} was trained on {describe_fingerprint(expected)}, but it is being loaded "
        f"onto {describe_fingerprint(actual)}: {mismatch_reason(expected, actual)}. Load the base it was trained on "
        f"(from_pretrained({expected.get('name_or_path') or '<that model>'!r})); to load it onto this model anyway, "
        "pass strict=False (peftkit merge: --force; outputs will differ from the trained model)."
    )
    if strict:
        raise BaseModelMismatchError(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def _check_not_already_merged(model: nn.Module, files: AdapterFiles, strict: bool) -> None:
    """Refuse an adapter that ``peftkit merge`` already folded into ``model`` (it would apply twice)."""
    checksum = ((files.meta or {}).get("files") or {}).get(WEIGHTS_FILE, {}).get("sha256")
    merged = getattr(getattr(model, "config", None), MERGED_ADAPTERS_ATTR, None) or []
    if not checksum or checksum not in merged:
        return
    message = (
        f"The adapter in {str(files.path)!r} is already merged into this model (recorded by peftkit merge in its "
        "config.json): loading it again would apply it twice. Load it onto the original base model instead, or "
        "pass strict=False (peftkit merge: --force) if you really mean to."
    )
    if strict:
        raise BaseModelMismatchError(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def _copy_weights(model: nn.Module, files: AdapterFiles, adapter_name: str, strict: bool) -> None:
    where = repr(str(files.path / WEIGHTS_FILE))
    expected = peft_key_map(model, adapter_name)
    missing = sorted(set(expected) - set(files.tensors))
    unexpected = sorted(set(files.tensors) - set(expected))
    if missing or unexpected:
        problem = _describe_key_mismatch(missing, unexpected)
        message = (
            f"{where} does not fit the {files.method!r} adapter built on this model: {problem}. The file was made "
            "for another model or with other options"
        )
        if strict:
            raise AdapterFileError(message + "; pass strict=False to load the matching tensors anyway.")
        warnings.warn(
            message + "; loading the matching tensors only (strict=False).", UserWarning, stacklevel=4
        )
    for key in sorted(set(expected) & set(files.tensors)):
        param, tensor = expected[key], files.tensors[key]
        if tuple(param.shape) != tuple(tensor.shape):
            raise AdapterFileError(
                f"{where}: tensor {key!r} has shape {tuple(tensor.shape)}, but this model expects "
                f"{tuple(param.shape)}.{_shape_hint(key, files)}"
            )
    with torch.no_grad():
        for key in sorted(set(expected) & set(files.tensors)):
            expected[key].copy_(files.tensors[key].to(device=expected[key].device))


def _describe_key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} tensors missing ({', '.join(missing[:_SHOWN])}{', ...' * (len(missing) > _SHOWN)})"
        )
    if unexpected:
        shown = ", ".join(unexpected[:_SHOWN]) + ", ..." * (len(unexpected) > _SHOWN)
        parts.append(f"{len(unexpected)} unexpected tensors ({shown})")
    return " and ".join(parts)


def _shape_hint(key: str, files: AdapterFiles) -> str:
    heads = files.meta.get("heads") or {}
    if any(key.startswith(f"base_model.model.{h}.") for h in files.heads) and heads.get("num_labels"):
        return (
            f" It is a task-head weight: the adapter was trained with num_labels={heads['num_labels']}; load the "
            f"base with num_labels={heads['num_labels']} (e.g. from_pretrained(path, num_labels=...))."
        )
    return " The adapter was made for a model of another size, or the file is corrupted."


def _apply_labels(model: nn.Module, files: AdapterFiles) -> None:
    """Adopt the adapter's label names if the base has the same number of labels."""
    heads = files.meta.get("heads") or {}
    id2label = heads.get("id2label")
    config = getattr(model, "config", None)
    if not id2label or config is None or getattr(config, "num_labels", None) != len(id2label):
        return
    current = {str(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if current == id2label:
        return
    if any(v != f"LABEL_{k}" for k, v in current.items()):
        logger.warning(
            "The base model's labels %s differ from the adapter's %s; keeping the base's.", current, id2label
        )
        return
    config.id2label = {int(k): v for k, v in id2label.items()}
    config.label2id = {v: int(k) for k, v in id2label.items()}
