"""Injecting LoRA (and DoRA) through peft's ``LoraModel``, and the ``peft.LoraConfig`` of an adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from peftkit._peft import uses_conv1d
from peftkit.methods.base import check_fits_targets

if TYPE_CHECKING:
    from peft import LoraConfig

    from peftkit.methods.lora.options import LoraOptions


def peft_lora_config(config: LoraOptions, targets: list[str] | str, fan_in_fan_out: bool) -> LoraConfig:
    """Translate peftkit options into a ``peft.LoraConfig`` (``use_dora`` from the options class)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        bias=config.bias,
        use_rslora=config.use_rslora,
        use_dora=type(config).use_dora,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
    )


def build_lora(model: nn.Module, config: LoraOptions, adapter_name: str, targets: list[str] | str) -> None:
    """Low-rank updates ``B @ A`` of the target projections (peft's LoRA layers).

    Plain LoRA layers (not DoRA's) take the fast path of :mod:`peftkit.methods.lora.fast`: same
    parameters and numbers as peft's forward, one fused autograd node per layer.
    """
    from peft.tuners.lora import LoraModel

    check_fits_targets(model, targets, "r", config.r)
    LoraModel(model, peft_lora_config(config, targets, uses_conv1d(model, targets)), adapter_name)
    if not type(config).use_dora:
        from peftkit.methods.lora.fast import enable_fast_lora

        enable_fast_lora(model)
