"""AdaLoRA's adapter files: only the ranks its budget kept are saved, as peft does.

``adapter_config.json`` carries ``rank_pattern``: ``<module>.lora_E`` -> one boolean per initial
rank (``True`` = kept). Saving drops the pruned rows of ``lora_A`` / ``lora_E`` and columns of
``lora_B``; loading shrinks the freshly injected layers to the saved ranks before the weights are
copied (peft's ``resize_modules_by_rank_pattern``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from peftkit.errors import AdapterFileError
from peftkit.io.paths import CONFIG_FILE
from peftkit.registry import PEFT_KEY_PREFIX

if TYPE_CHECKING:
    from peftkit.io.layout import AdapterFiles
    from peftkit.state import AdapterRecord

logger = logging.getLogger(__name__)


def saved_rank_pattern(
    rank_pattern: dict[str, Any] | None, adapter_name: str
) -> dict[str, list[bool]] | None:
    """The rank pattern with the adapter name removed from its keys, as peft saves it.

    Keys become ``<module>.lora_E``; values are lists of booleans (``True`` = rank kept).
    """
    if not rank_pattern:
        return None
    suffix = f".{adapter_name}"
    pattern = {}
    for key, mask in rank_pattern.items():
        key = key.removesuffix(suffix)
        pattern[key] = [bool(v) for v in (mask.view(-1).tolist() if isinstance(mask, torch.Tensor) else mask)]
    return pattern


def file_rank_pattern(files: AdapterFiles) -> dict[str, list[bool]] | None:
    """The rank pattern recorded in a directory's ``adapter_config.json`` (``None`` if none)."""
    return files.peft_config.get("rank_pattern") or None


def truncate_by_rank_pattern(
    tensors: dict[str, torch.Tensor], rank_pattern: dict[str, list[bool]] | None
) -> dict[str, torch.Tensor]:
    """Keep only the ranks AdaLoRA kept: rows of ``lora_A`` / ``lora_E``, columns of ``lora_B``."""
    if not rank_pattern:
        return tensors
    out = dict(tensors)
    for key, mask in rank_pattern.items():
        module = key.rsplit(".", 1)[0]  # strip ".lora_E"
        keep = torch.tensor(mask, dtype=torch.bool, device="cpu")  # the tensors being saved are on the CPU
        for layer in ("lora_A", "lora_E", "lora_B"):
            name = f"{PEFT_KEY_PREFIX}{module}.{layer}"
            if name not in out:
                continue
            tensor = out[name]
            full = tensor.shape[1] if layer == "lora_B" else tensor.shape[0]
            if full == len(mask) and int(keep.sum()) != full:
                out[name] = tensor[:, keep].contiguous() if layer == "lora_B" else tensor[keep].contiguous()
    return out


def before_save(record: AdapterRecord, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the pruned ranks of a live adapter's tensors."""
    if record.handle is None:
        return tensors
    return truncate_by_rank_pattern(
        tensors, saved_rank_pattern(record.handle.peft_config.rank_pattern, record.name)
    )


def after_inject(record: AdapterRecord, files: AdapterFiles, trainable: bool) -> None:
    """Shrink freshly injected layers to the saved ranks.

    The full ``<module>.lora_E.<adapter>`` keys are passed, which peft parses whatever the adapter name.
    """
    pattern = file_rank_pattern(files)
    if not pattern or record.handle is None:
        return
    full_keys = {f"{key}.{record.name}": mask for key, mask in pattern.items()}
    record.handle.tuner.resize_modules_by_rank_pattern(full_keys, record.name)
    record.handle.peft_config.rank_pattern = full_keys
    if trainable:
        logger.warning(
            "AdaLoRA adapter %r was saved after rank pruning; continuing to train it keeps the pruned ranks "
            "(the budget schedule is not resumed).",
            record.name,
        )


def check(files: AdapterFiles) -> None:
    """Every mask has ``init_r`` booleans and keeps as many ranks as ``lora_E`` has rows."""
    where = repr(str(files.path / CONFIG_FILE))
    init_r = files.options.get("init_r")
    for key, mask in (file_rank_pattern(files) or {}).items():
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
