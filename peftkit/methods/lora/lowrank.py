"""LoRA's adapter files in factor form, for ``peftkit combine`` and ``peftkit inspect``.

File tensors ``<module>.lora_A.weight`` (``r x in``) and ``<module>.lora_B.weight`` (``out x r``)
give ``delta_W = scale * B @ A`` with ``scale = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch

from peftkit.errors import MergeError
from peftkit.merge.tensors import LowRank, LowRankUpdates
from peftkit.registry import PEFT_KEY_PREFIX

if TYPE_CHECKING:
    from peftkit.io.layout import AdapterFiles

_A, _B = ".lora_A.weight", ".lora_B.weight"


def lora_scale(alpha: float, r: int, use_rslora: bool = False) -> float:
    """LoRA scaling as in peft: ``alpha / r``, or ``alpha / sqrt(r)`` with rank-stabilised LoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def read(files: AdapterFiles, tensors: dict[str, torch.Tensor]) -> LowRankUpdates:
    """Per-module updates of a LoRA adapter.

    Raises:
        MergeError: LoRA on embeddings (no factor form), or a factor without its partner.

    """
    options = files.options
    r, alpha = int(options.get("r", 8)), float(options.get("alpha", 8.0))
    scale = lora_scale(alpha, r, bool(options.get("use_rslora", False)))
    for key in tensors:
        if not key.endswith((_A, _B)):
            raise MergeError(
                f"{files.path}: tensor {key!r} is not a LoRA linear weight (LoRA on embeddings cannot be combined)."
            )
    found = LowRankUpdates(updates={}, ranks={}, nominal_rank=r)
    for key in sorted(k for k in tensors if k.endswith(_A)):
        module = key[len(PEFT_KEY_PREFIX) : -len(_A)]
        b_key = key[: -len(_A)] + _B
        if b_key not in tensors:
            raise MergeError(
                f"{files.path}: {key!r} has no matching {b_key!r}; the adapter file is incomplete."
            )
        found.updates[module] = LowRank(tensors[key].float(), tensors[b_key].float(), scale)
        found.ranks[module] = int(tensors[key].shape[0])
    return found


def output_scale(rank: int) -> float:
    """Scale of a combined adapter of ``rank``: written with ``alpha = rank``, i.e. 1."""
    return lora_scale(float(rank), rank)


def write(
    first: AdapterFiles, updates: dict[str, LowRank], rank: int, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Tensors, ``adapter_config.json`` and options of a LoRA adapter of rank ``rank`` holding ``updates``."""
    tensors: dict[str, torch.Tensor] = {}
    for module, update in updates.items():
        tensors[f"{PEFT_KEY_PREFIX}{module}{_A}"] = update.A.to(dtype).contiguous()
        tensors[f"{PEFT_KEY_PREFIX}{module}{_B}"] = update.B.to(dtype).contiguous()
    options = {**first.options, "r": rank, "alpha": float(rank), "use_rslora": False}
    peft_config = copy.deepcopy(first.peft_config)
    peft_config.update(r=rank, lora_alpha=float(rank), use_rslora=False, rank_pattern={}, alpha_pattern={})
    return tensors, peft_config, options
