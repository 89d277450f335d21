"""An out-of-tree peftkit method, as a third-party package would ship it.

``scale``: multiply each output channel of the target modules by a learned factor (an
IA3-like method). The layer follows peft's ``BaseTunerLayer`` conventions, which is all peftkit
needs to train, switch, save and load it; ``merge()`` scales the base weight, so ``peftkit merge``
folds it; ``tensor_names`` lets adapter files be checked; ``peftkit combine`` averages the scales.
Nothing in peftkit knows this method.
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
        width = (
            getattr(self.base_layer, "out_features", None) or self.base_layer.nf
        )  # nn.Linear or GPT-2 Conv1D
        device = self.base_layer.weight.device
        self.scale_vector[adapter_name] = nn.Parameter(torch.full((width,), float(init), device=device))
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self.get_base_layer()
        with torch.no_grad():
            for name in adapter_names or self.active_adapters:
                scale = self.scale_vector[name].to(base.weight.dtype)
                conv1d = type(base).__name__ == "Conv1D"  # weight stored (in, out)
                base.weight.mul_(scale[None, :] if conv1d else scale[:, None])
                if base.bias is not None:
                    base.bias.mul_(scale)
                self.merged_adapters.append(name)

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

    @peftkit.register_method(
        "scale",
        config_cls=ScaleConfig,
        description="Learned per-channel output scales",
        mergeable=True,
        tensor_names=("scale_vector",),
    )
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
