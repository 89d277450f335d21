"""An out-of-tree peftkit method, as a third-party package would ship it.

``scale``: multiply each output channel of the target modules by a learned factor (an
IA3-like method). The layer follows peft's ``BaseTunerLayer`` conventions, which is all peftkit
needs to train, switch, save and load it.
"""

from __future__ import annotations

import dataclasses

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

import peftkit
from peftkit.methods.base import MethodConfig, require


@dataclasses.dataclass
class ScaleConfig(MethodConfig):
    init: float = 1.0
    method_name = "scale"

    def validate(self) -> None:
        require(self.init > 0, f"init={self.init} must be > 0.")


class ScaleLayer(nn.Module, BaseTunerLayer):
    adapter_layer_names = ("scale_vector",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, init: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scale_vector = nn.ParameterDict()
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []
        self.update_layer(adapter_name, init)

    def update_layer(self, adapter_name: str, init: float) -> None:
        width = self.base_layer.out_features
        self.scale_vector[adapter_name] = nn.Parameter(torch.full((width,), float(init)))
        self.set_adapter(self.active_adapters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.disable_adapters:
            return out
        for name in self.active_adapters:
            if name in self.scale_vector:
                out = out * self.scale_vector[name]
        return out


def register() -> None:
    """Entry point named in the distribution's entry_points.txt."""

    @peftkit.register_method("scale", config_cls=ScaleConfig, description="Learned per-channel output scales")
    def build(model: nn.Module, config: ScaleConfig, adapter_name: str, targets) -> None:
        from peftkit.targets import matches

        for name, module in list(model.named_modules()):
            if not name or not matches(name, targets) or ".base_layer" in name:
                continue
            if isinstance(module, ScaleLayer):
                module.update_layer(adapter_name, config.init)
                continue
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, ScaleLayer(module, adapter_name, config.init))
