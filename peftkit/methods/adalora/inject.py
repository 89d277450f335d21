"""Injecting AdaLoRA through peft's ``AdaLoraModel``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from peftkit._peft import uses_conv1d
from peftkit.methods.adalora.handle import AdaLoraHandle
from peftkit.methods.base import check_fits_targets

if TYPE_CHECKING:
    from peft import AdaLoraConfig

    from peftkit.methods.adalora.options import AdaLoraOptions


def peft_adalora_config(
    config: AdaLoraOptions, targets: list[str] | str, fan_in_fan_out: bool
) -> AdaLoraConfig:
    """Translate peftkit options into a ``peft.AdaLoraConfig``."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(
        total_step=config.total_step,
        target_r=config.target_r,
        init_r=config.init_r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        tinit=config.tinit,
        tfinal=config.tfinal,
        deltaT=config.delta_t,
        beta1=config.beta1,
        beta2=config.beta2,
        orth_reg_weight=config.orth_reg_weight,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
    )


def build_adalora(
    model: nn.Module, config: AdaLoraOptions, adapter_name: str, targets: list[str] | str
) -> AdaLoraHandle:
    """SVD-parametrised LoRA whose rank budget is reallocated during training."""
    from peft.tuners.adalora import AdaLoraModel

    from peftkit.methods.adalora.fast import enable_fast_adalora

    check_fits_targets(model, targets, "init_r", config.init_r)
    tuner = AdaLoraModel(
        model, peft_adalora_config(config, targets, uses_conv1d(model, targets)), adapter_name
    )
    enable_fast_adalora(model)  # same parameters and numbers, LoRA's fused node (see fast.py)
    return AdaLoraHandle(tuner, model, adapter_name, config.orth_reg_weight)
