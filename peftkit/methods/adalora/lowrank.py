"""AdaLoRA's adapter files in factor form, for ``peftkit combine`` and ``peftkit inspect``.

AdaLoRA stores ``delta_W = scale * lora_B (out x r) @ diag(lora_E) @ lora_A (r x in)`` with
``scale = alpha / (init_r + 1e-5)`` (peft keeps ``ranknum = init_r`` when it reloads a pruned
adapter). The singular values are folded into ``A``; pruned ranks are put back as zeros at their
positions, so every module has ``init_r`` ranks.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from peftkit.errors import MergeError
from peftkit.merge.tensors import LowRank, LowRankUpdates
from peftkit.methods.adalora.files import file_rank_pattern
from peftkit.registry import PEFT_KEY_PREFIX

if TYPE_CHECKING:
    from peftkit.io.layout import AdapterFiles


def adalora_scale(alpha: float, ranknum: float) -> float:
    """AdaLoRA scaling as in peft: ``alpha / (ranknum + 1e-5)``."""
    return alpha / (ranknum + 1e-5)


def fold_singular_values(
    lora_a: torch.Tensor, lora_e: torch.Tensor, lora_b: torch.Tensor, scale: float
) -> LowRank:
    """Fold AdaLoRA's ``P Λ Q`` (``lora_B``, ``lora_E``, ``lora_A``) into factor form."""
    return LowRank(A=lora_a.float() * lora_e.float().reshape(-1, 1), B=lora_b.float(), scale=scale)


def read(files: AdapterFiles, tensors: dict[str, torch.Tensor]) -> LowRankUpdates:
    """Per-module updates of an AdaLoRA adapter, padded back to ``init_r``.

    Raises:
        MergeError: A module lacks one of its three tensors, or stores more ranks than ``init_r``.

    """
    options = files.options
    init_r, alpha = int(options.get("init_r", 12)), float(options.get("alpha", 32.0))
    scale = adalora_scale(alpha, init_r)
    pattern = file_rank_pattern(files) or {}
    found = LowRankUpdates(updates={}, ranks={}, nominal_rank=init_r)
    for key in sorted(k for k in tensors if k.endswith(".lora_A")):
        stem = key[: -len(".lora_A")]
        module = stem[len(PEFT_KEY_PREFIX) :]
        try:
            a, e, b = tensors[key], tensors[stem + ".lora_E"], tensors[stem + ".lora_B"]
        except KeyError as exc:
            raise MergeError(
                f"{files.path}: AdaLoRA tensor {exc.args[0]!r} is missing; the file is incomplete."
            ) from None
        found.ranks[module] = int((e.reshape(-1) != 0).sum())
        found.updates[module] = _pad_rank(
            fold_singular_values(a, e, b, scale), init_r, pattern.get(module + ".lora_E")
        )
    return found


def _pad_rank(update: LowRank, rank: int, mask: list[bool] | None) -> LowRank:
    """Put truncated ranks back at their original positions (zeros elsewhere)."""
    if update.rank == rank:
        return update
    if update.rank > rank:
        raise MergeError(
            f"An AdaLoRA module stores rank {update.rank} > init_r={rank}; the file is inconsistent."
        )
    device = update.A.device
    keep = torch.tensor(mask, dtype=torch.bool, device=device) if mask and len(mask) == rank else None
    if keep is None or int(keep.sum()) != update.rank:
        keep = torch.arange(rank, device=device) < update.rank
    a = update.A.new_zeros(rank, update.A.shape[1])
    b = update.B.new_zeros(update.B.shape[0], rank)
    a[keep], b[:, keep] = update.A, update.B
    return LowRank(a, b, update.scale)


def output_scale(rank: int) -> float:
    """Scale of a combined adapter of ``rank``: written with ``alpha = init_r = rank``."""
    return adalora_scale(float(rank), rank)


def write(
    first: AdapterFiles, updates: dict[str, LowRank], rank: int, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """An AdaLoRA adapter of ``init_r = rank`` holding ``updates``: ``lora_E = 1``, values folded into ``A``."""
    tensors: dict[str, torch.Tensor] = {}
    for module, update in updates.items():
        stem = f"{PEFT_KEY_PREFIX}{module}"
        tensors[stem + ".lora_A"] = update.A.to(dtype).contiguous()
        tensors[stem + ".lora_E"] = torch.ones(rank, 1, dtype=dtype, device=update.A.device)
        tensors[stem + ".lora_B"] = update.B.to(dtype).contiguous()
    target_r = min(int(first.options.get("target_r", rank)), rank)
    options = {**first.options, "init_r": rank, "target_r": target_r, "alpha": float(rank)}
    peft_config = copy.deepcopy(first.peft_config)
    peft_config.update(init_r=rank, target_r=target_r, lora_alpha=float(rank), rank_pattern=None)
    return tensors, peft_config, options
