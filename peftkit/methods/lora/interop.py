"""LoRA <-> peft's ``adapter_config.json`` (``peft_type: LORA``); shared with DoRA (``use_dora: true``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftkit._peft import targets_conv1d
from peftkit.methods.lora.inject import peft_lora_config

if TYPE_CHECKING:
    from torch import nn

    from peftkit.state import AdapterRecord

#: peft's defaults for the fields it may leave out.
_PEFT_DEFAULTS = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "use_rslora": False}
#: adapter_config.json field -> peftkit option.
_OPTION_OF = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "use_rslora": "use_rslora"}


def to_peft(model: nn.Module, record: AdapterRecord) -> dict[str, Any]:
    """The ``adapter_config.json`` of a LoRA / DoRA adapter, as peft writes it."""
    targets = sorted(record.targets)
    return peft_lora_config(record.config, targets, targets_conv1d(model, targets)).to_dict()


def from_peft(peft_config: dict[str, Any]) -> dict[str, Any]:
    """The options peft reads from ``adapter_config.json`` (values as written: validated later)."""
    return {ours: peft_config.get(theirs, _PEFT_DEFAULTS[theirs]) for theirs, ours in _OPTION_OF.items()}


def claims_lora(peft_config: dict[str, Any]) -> bool:
    """A peft LoRA directory without DoRA's magnitude vectors."""
    return peft_config.get("peft_type") == "LORA" and not peft_config.get("use_dora")


def claims_dora(peft_config: dict[str, Any]) -> bool:
    """A peft LoRA directory with ``use_dora: true``."""
    return peft_config.get("peft_type") == "LORA" and bool(peft_config.get("use_dora"))
