"""Options of the ``"lora"`` method."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

from peftkit.methods.base import MethodConfig, check_dropout, check_positive, check_scale, require


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
    #: Weight-decomposed LoRA (peft's ``use_dora``); set by the ``dora`` method's options.
    use_dora: ClassVar[bool] = False
    aliases = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}

    def validate(self) -> None:
        """Check ranges: ``r > 0``, ``alpha > 0``, dropout in [0, 1)."""
        check_positive("r", self.r)
        check_positive("alpha", self.alpha, "16")
        check_dropout("dropout", self.dropout)
        if self.use_rslora:
            check_scale("alpha", self.alpha / math.sqrt(self.r), "alpha / sqrt(r)")
        else:
            check_scale("alpha", self.alpha / self.r, "alpha / r")
        require(self.bias == "none", f"bias={self.bias!r} is not supported yet: use bias='none'.")
