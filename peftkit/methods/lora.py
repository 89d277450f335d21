"""LoRA, backed by peft's implementation.

::

    x ──► W (frozen) ────────────────┐
    └──► dropout ─► A (r×in) ─► B (out×r) ─► ×(alpha/r) ─► (+) ─► y

``B`` starts at zero, so the wrapped model equals the base model at step 0. peft dispatches
the layer type (``nn.Linear``, GPT-2 ``Conv1D``, bitsandbytes ``Linear8bitLt``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from torch import nn

from peftkit._peft import is_conv1d
from peftkit.methods.base import MethodConfig, check_dropout, check_positive, require
from peftkit.registry import register_method

if TYPE_CHECKING:
    from peft import LoraConfig


@dataclasses.dataclass
class LoraOptions(MethodConfig):
    """Options of the ``"lora"`` method.

    Attributes:
        r: Rank of the update ``B @ A``.
        alpha: Scaling numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        dropout: Dropout on the LoRA branch input, in [0, 1).
        bias: Which biases to train: ``"none"``, ``"all"`` or ``"lora_only"``.
        use_rslora: Use rank-stabilised scaling ``alpha / sqrt(r)``.

    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False

    method_name = "lora"
    aliases = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}

    def validate(self) -> None:
        """Check ranges: ``r > 0``, ``alpha > 0``, dropout in [0, 1)."""
        check_positive("r", self.r)
        check_positive("alpha", self.alpha, "16")
        check_dropout("dropout", self.dropout)
        require(self.bias == "none", f"bias={self.bias!r} is not supported yet: use bias='none'.")


def uses_conv1d(model: nn.Module, targets: list[str] | str) -> bool:
    """Whether the targeted modules are GPT-2 style ``Conv1D`` (weights stored transposed).

    Looks through adapter layers already injected (``get_base_layer``), so a second adapter on
    a GPT-2 model gets the same ``fan_in_fan_out`` as the first.
    """
    from peftkit.targets import matches

    return any(
        is_conv1d(module)
        for name, module in model.named_modules()
        if ".base_layer" not in name and matches(name, targets)
    )


def to_peft_lora_config(config: LoraOptions, targets: list[str] | str, model: nn.Module) -> LoraConfig:
    """Translate peftkit options into a ``peft.LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        bias=config.bias,
        use_rslora=config.use_rslora,
        target_modules=targets,
        fan_in_fan_out=uses_conv1d(model, targets),
    )


@register_method(
    "lora", config_cls=LoraOptions, mergeable=True, peft_type="LORA", source="peftkit (peft LoRA)"
)
def build_lora(model: nn.Module, config: LoraOptions, adapter_name: str, targets: list[str] | str) -> None:
    """Low-rank updates of the attention projections (peft's LoRA layers)."""
    from peft.tuners.lora import LoraModel

    LoraModel(model, to_peft_lora_config(config, targets, model), adapter_name)
