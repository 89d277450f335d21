"""Read saved adapters into the factor form of :mod:`peftkit.merge.tensors`, and write them back.

An adapter directory (see :mod:`peftkit.io.layout`) holds peft-keyed tensors::

    base_model.model.<module>.lora_A.weight / .lora_B.weight          LoRA
    base_model.model.<module>.lora_A / .lora_E / .lora_B              AdaLoRA (truncated to the kept ranks)
    base_model.model.<module>.adapter_down.weight ...                 bottleneck adapter
    base_model.model.<head>.weight / .bias                            trained task heads

:func:`view_adapter` splits them into per-module low-rank updates, head tensors and the rest;
:func:`pack_low_rank` turns combined updates into the tensors and configs of a new adapter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from peftkit.errors import MergeError
from peftkit.io import AdapterFiles
from peftkit.merge.tensors import LowRank, adalora_scale, adalora_to_low_rank, lora_scale
from peftkit.state import PEFT_KEY_PREFIX

#: Methods whose updates are low-rank products (combined with peft's rules).
LOW_RANK_METHODS = ("lora", "adalora")
_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class AdapterView:
    """An adapter directory split into its parts.

    Attributes:
        files: The files as read by :func:`peftkit.io.read_adapter_dir`.
        method: Method name.
        updates: LoRA / AdaLoRA: module name -> update in factor form (AdaLoRA padded back to ``init_r``).
        ranks: LoRA / AdaLoRA: module name -> rank actually stored (AdaLoRA: ranks kept by its budget).
        nominal_rank: ``r`` (LoRA) or ``init_r`` (AdaLoRA); 0 for other methods.
        heads: Head tensors by peft key.
        rest: Every other tensor (the bottleneck adapter's weights) by peft key.

    """

    files: AdapterFiles
    method: str
    updates: dict[str, LowRank] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    nominal_rank: int = 0
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    rest: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The directory, for messages."""
        return str(self.files.path)


def view_adapter(files: AdapterFiles) -> AdapterView:
    """Split an adapter's tensors into low-rank updates, head tensors and the rest.

    Raises:
        MergeError: LoRA on embeddings, or a LoRA tensor without its partner.

    """
    method = files.method
    head_prefixes = tuple(PEFT_KEY_PREFIX + head + "." for head in files.heads)
    view = AdapterView(files=files, method=method)
    body: dict[str, torch.Tensor] = {}
    for key, tensor in files.tensors.items():
        if key.startswith(head_prefixes):
            view.heads[key] = tensor
        else:
            body[key] = tensor
    if method == "lora":
        _view_lora(view, body)
    elif method == "adalora":
        _view_adalora(view, body)
    else:
        view.rest = body
    return view


def _view_lora(view: AdapterView, body: dict[str, torch.Tensor]) -> None:
    options = view.files.options
    r, alpha = int(options.get("r", 8)), float(options.get("alpha", 8.0))
    scale = lora_scale(alpha, r, bool(options.get("use_rslora", False)))
    view.nominal_rank = r
    for key in body:
        if not key.endswith((_LORA_A, _LORA_B)):
            raise MergeError(
                f"{view.name}: tensor {key!r} is not a LoRA linear weight (LoRA on embeddings cannot be combined)."
            )
    for key in sorted(k for k in body if k.endswith(_LORA_A)):
        module = key[len(PEFT_KEY_PREFIX) : -len(_LORA_A)]
        b_key = key[: -len(_LORA_A)] + _LORA_B
        if b_key not in body:
            raise MergeError(
                f"{view.name}: {key!r} has no matching {b_key!r}; the adapter file is incomplete."
            )
        view.updates[module] = LowRank(body[key].float(), body[b_key].float(), scale)
        view.ranks[module] = int(body[key].shape[0])


def _view_adalora(view: AdapterView, body: dict[str, torch.Tensor]) -> None:
    options = view.files.options
    init_r, alpha = int(options.get("init_r", 12)), float(options.get("alpha", 32.0))
    scale = adalora_scale(alpha, init_r)  # peft keeps ranknum = init_r when it reloads a pruned adapter
    pattern = view.files.rank_pattern or {}
    view.nominal_rank = init_r
    for key in sorted(k for k in body if k.endswith(".lora_A")):
        stem = key[: -len(".lora_A")]
        module = stem[len(PEFT_KEY_PREFIX) :]
        try:
            a, e, b = body[key], body[stem + ".lora_E"], body[stem + ".lora_B"]
        except KeyError as exc:
            raise MergeError(
                f"{view.name}: AdaLoRA tensor {exc.args[0]!r} is missing; the file is incomplete."
            ) from None
        update = adalora_to_low_rank(a, e, b, scale)
        view.ranks[module] = int((e.reshape(-1) != 0).sum())
        view.updates[module] = _pad_rank(update, init_r, pattern.get(module + ".lora_E"))


def _pad_rank(update: LowRank, rank: int, mask: list[bool] | None) -> LowRank:
    """Put truncated AdaLoRA ranks back at their original positions (zeros elsewhere)."""
    if update.rank == rank:
        return update
    if update.rank > rank:
        raise MergeError(
            f"An AdaLoRA module stores rank {update.rank} > init_r={rank}; the file is inconsistent."
        )
    keep = (
        torch.tensor(mask, dtype=torch.bool, device=update.A.device) if mask and len(mask) == rank else None
    )
    if keep is None or int(keep.sum()) != update.rank:
        keep = torch.arange(rank, device=update.A.device) < update.rank
    a = update.A.new_zeros(rank, update.A.shape[1])
    b = update.B.new_zeros(update.B.shape[0], rank)
    a[keep], b[:, keep] = update.A, update.B
    return LowRank(a, b, update.scale)


def output_scale(method: str, rank: int) -> float:
    """Scaling of a combined adapter of ``rank`` (LoRA: ``alpha = r``; AdaLoRA: ``alpha = init_r``)."""
    return lora_scale(float(rank), rank) if method == "lora" else adalora_scale(float(rank), rank)


def pack_low_rank(
    first: AdapterView, updates: dict[str, LowRank], rank: int, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Tensors, ``adapter_config.json`` and options of a combined LoRA / AdaLoRA adapter.

    The output has the same rank ``rank`` on every module, ``alpha = rank`` and (AdaLoRA)
    ``lora_E = 1`` with the singular values folded into ``lora_A``.

    Args:
        first: The first input adapter (its configs are the template).
        updates: Combined update per module, with scale :func:`output_scale`.
        rank: Output rank.
        dtype: dtype of the written tensors.

    Returns:
        ``(tensors, peft_config, options)``.

    """
    tensors: dict[str, torch.Tensor] = {}
    peft_config = copy.deepcopy(first.files.peft_config)
    options = dict(first.files.options)
    if first.method == "lora":
        for module, update in updates.items():
            tensors[f"{PEFT_KEY_PREFIX}{module}{_LORA_A}"] = update.A.to(dtype).contiguous()
            tensors[f"{PEFT_KEY_PREFIX}{module}{_LORA_B}"] = update.B.to(dtype).contiguous()
        options.update(r=rank, alpha=float(rank), use_rslora=False)
        peft_config.update(
            r=rank, lora_alpha=float(rank), use_rslora=False, rank_pattern={}, alpha_pattern={}
        )
    else:
        for module, update in updates.items():
            stem = f"{PEFT_KEY_PREFIX}{module}"
            tensors[stem + ".lora_A"] = update.A.to(dtype).contiguous()
            tensors[stem + ".lora_E"] = torch.ones(rank, 1, dtype=dtype, device=update.A.device)
            tensors[stem + ".lora_B"] = update.B.to(dtype).contiguous()
        target_r = min(int(options.get("target_r", rank)), rank)
        options.update(init_r=rank, target_r=target_r, alpha=float(rank))
        peft_config.update(init_r=rank, target_r=target_r, lora_alpha=float(rank), rank_pattern=None)
    return tensors, peft_config, options
