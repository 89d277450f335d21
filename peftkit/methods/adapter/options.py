"""Options of the ``"adapter"`` method (bottleneck adapters)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from peftkit.methods.base import (
    ACTIVATIONS,
    MethodConfig,
    check_dropout,
    check_positive,
    check_scale,
    require,
)

#: ``placement`` -> the sub-layer outputs (target roles of :mod:`peftkit.models`) it adapts.
PLACEMENTS = {"houlsby": ("attention_output", "ffn_output"), "pfeiffer": ("ffn_output",)}


@dataclasses.dataclass
class AdapterOptions(MethodConfig):
    """Options of the ``"adapter"`` method.

    Attributes:
        placement: ``"houlsby"`` (after attention and feed-forward) or ``"pfeiffer"`` (feed-forward only).
        reduction_factor: Hidden size divided by the bottleneck size.
        non_linearity: ``"relu"``, ``"gelu"``, ``"silu"``/``"swish"`` or ``"tanh"``.
        dropout: Dropout inside the bottleneck, in [0, 1).
        scaling: Multiplier of the adapter output.
        layer_norm: Apply a (trainable) LayerNorm before the down-projection.
        init_std: Standard deviation of the down-projection's normal initialisation.

    """

    placement: Literal["houlsby", "pfeiffer"] = "houlsby"
    reduction_factor: float = 16.0
    non_linearity: str = "relu"
    dropout: float = 0.0
    scaling: float = 1.0
    layer_norm: bool = False
    init_std: float = 1e-2

    method_name = "adapter"
    aliases = {"reduction": "reduction_factor", "activation": "non_linearity", "ln": "layer_norm"}

    def validate(self) -> None:
        """Check placement, reduction factor, activation name and dropout."""
        require(
            self.placement in PLACEMENTS,
            f"placement={self.placement!r} is unknown: use 'houlsby' or 'pfeiffer'.",
        )
        check_positive("reduction_factor", self.reduction_factor, "16")
        require(
            self.non_linearity in ACTIVATIONS,
            f"non_linearity={self.non_linearity!r} is unknown: use one of {', '.join(ACTIVATIONS)}.",
        )
        check_dropout("dropout", self.dropout)
        check_positive("init_std", self.init_std, "0.01")
        check_scale("scaling", self.scaling, "scaling")
