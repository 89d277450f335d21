"""AdaLoRA <-> peft's ``adapter_config.json`` (``peft_type: ADALORA``)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from peftkit._peft import targets_conv1d
from peftkit.methods.adalora.files import saved_rank_pattern

if TYPE_CHECKING:
    from torch import nn

    from peftkit.state import AdapterRecord

#: adapter_config.json field -> peftkit option.
_OPTION_OF = {
    "total_step": "total_step",
    "target_r": "target_r",
    "init_r": "init_r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "tinit": "tinit",
    "tfinal": "tfinal",
    "deltaT": "delta_t",
    "beta1": "beta1",
    "beta2": "beta2",
    "orth_reg_weight": "orth_reg_weight",
}


def to_peft(model: nn.Module, record: AdapterRecord) -> dict[str, Any]:
    """The live ``AdaLoraConfig`` (with the rank pattern as peft saves it) as a dict."""
    config = copy.deepcopy(record.handle.peft_config)
    config.rank_pattern = saved_rank_pattern(config.rank_pattern, record.name)
    config.target_modules = sorted(record.targets)
    config.fan_in_fan_out = targets_conv1d(model, sorted(record.targets))
    return config.to_dict()


def from_peft(peft_config: dict[str, Any]) -> dict[str, Any]:
    """The options recorded in ``adapter_config.json`` (those present; values as written)."""
    return {ours: peft_config[theirs] for theirs, ours in _OPTION_OF.items() if theirs in peft_config}
