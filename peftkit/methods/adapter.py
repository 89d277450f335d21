"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), implemented in peftkit.

An adapter wraps the *output projection* of a transformer sub-layer and adds a small
residual bottleneck to its output, before the sub-layer's own residual connection::

    h = W_out(x)  (frozen; nn.Linear, GPT-2 Conv1D or bitsandbytes Linear8bitLt)
    y = h + scaling * up(dropout(act(down(norm(h)))))
            └ in→in/reduction_factor ┘└ back to in, zero-initialised ┘

* ``placement="houlsby"``: after the attention output and after the feed-forward output.
* ``placement="pfeiffer"``: after the feed-forward output only.

``up`` starts at zero, so the wrapped model equals the base model at step 0. The layer follows
peft's conventions (``BaseTunerLayer``: weights in ``ModuleDict``s keyed by adapter name,
``set_adapter`` / ``enable_adapters``), so several adapters can live on one model. Bottleneck
adapters are non-linear and therefore cannot be merged into the base weights. The layer itself
lives in :mod:`peftkit.methods.bottleneck`, imported when an adapter is built (it needs peft).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import nn

from peftkit.methods.base import MethodConfig, check_dropout, check_positive, require
from peftkit.registry import register_method
from peftkit.targets import matches, sublayer_targets

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}
PLACEMENTS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}


@dataclasses.dataclass
class BottleneckOptions(MethodConfig):
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


def default_bottleneck_targets(model: nn.Module, config: BottleneckOptions) -> str:
    """Regex of the sub-layer output projections for the configured placement."""
    return sublayer_targets(model, PLACEMENTS[config.placement])


@register_method(
    "adapter",
    config_cls=BottleneckOptions,
    mergeable=False,
    peft_type="BOTTLENECK",
    source="peftkit",
    default_targets=default_bottleneck_targets,
)
def build_bottleneck(
    model: nn.Module, config: BottleneckOptions, adapter_name: str, targets: list[str] | str
) -> None:
    """Bottleneck adapters after sub-layer outputs (Houlsby or Pfeiffer placement)."""
    from peftkit.methods.bottleneck import BottleneckLayer  # imports peft: only when building

    chosen = [
        name
        for name, module in model.named_modules()
        if name and matches(name, targets) and ".base_layer" not in name and "original_module" not in name
    ]
    for name in chosen:
        module = model.get_submodule(name)
        if isinstance(module, BottleneckLayer):
            module.update_layer(adapter_name, config)
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, BottleneckLayer(module, adapter_name, config))
