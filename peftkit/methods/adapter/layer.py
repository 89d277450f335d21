"""The bottleneck adapter layer (see :mod:`peftkit.methods.adapter` for the method and its options).

An :class:`AdapterLayer` wraps a frozen output projection and adds one residual bottleneck per
adapter name, following peft's ``BaseTunerLayer`` conventions (weights in ``ModuleDict``s keyed by
adapter name, ``set_adapter`` / ``enable_adapters``, ``get_base_layer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftkit.errors import MergeError
from peftkit.methods.bottleneck import add_bottleneck, bottleneck_options, set_dropout_mode
from peftkit.targets import linear_width

if TYPE_CHECKING:
    from peftkit.methods.adapter.options import AdapterOptions


def output_features(module: nn.Module) -> int:
    """Output width of a linear-like module (``nn.Linear``, ``Conv1D``, bitsandbytes layers)."""
    width = linear_width(module)
    if width is not None:
        return width[1]
    raise TypeError(
        f"Cannot place a bottleneck adapter after a {type(module).__name__}: it has no output width."
    )


class AdapterLayer(nn.Module, BaseTunerLayer):
    """A frozen output projection followed by one bottleneck adapter per adapter name."""

    adapter_layer_names = ("adapter_down", "adapter_up", "adapter_norm")
    other_param_names = ("adapter_options",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: AdapterOptions) -> None:
        """Wrap ``base_layer`` and add the adapter ``adapter_name`` described by ``config``."""
        super().__init__()
        self.base_layer = base_layer
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_norm = nn.ModuleDict()
        self.adapter_options: dict[str, dict[str, Any]] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: AdapterOptions) -> None:
        """Add (or replace) the bottleneck ``adapter_name``."""
        width = output_features(self.base_layer)
        bottleneck = max(1, int(width // config.reduction_factor))
        weight = getattr(self.base_layer, "weight", None)
        device = weight.device if weight is not None else None
        down = nn.Linear(width, bottleneck, device=device)
        up = nn.Linear(bottleneck, width, device=device)
        nn.init.normal_(down.weight, std=config.init_std)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.adapter_down[adapter_name] = down
        self.adapter_up[adapter_name] = up
        if config.layer_norm:
            self.adapter_norm[adapter_name] = nn.LayerNorm(width, device=device)
        self.adapter_options[adapter_name] = bottleneck_options(config)
        self.set_adapter(self.active_adapters)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base projection, then ``h + scaling * up(act(down(h)))`` for each active adapter."""
        hidden = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return hidden
        for name in self.active_adapters:
            if name not in self.adapter_down:
                continue
            norm = self.adapter_norm[name] if name in self.adapter_norm else None
            hidden = add_bottleneck(
                hidden,
                hidden,
                self.adapter_down[name],
                self.adapter_up[name],
                self.adapter_options[name],
                norm,
            )
        return hidden

    def train(self, mode: bool = True) -> AdapterLayer:
        """Propagate train/eval mode to the per-adapter dropout modules too."""
        super().train(mode)
        set_dropout_mode(self.adapter_options.values(), mode)
        return self

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Bottleneck adapters are non-linear: they cannot be folded into a weight matrix."""
        raise MergeError(
            "A bottleneck adapter is non-linear (down-projection, activation, up-projection) and cannot be merged "
            "into the base weights. Keep the adapter file and load it with peftkit.load_adapter, or average several "
            "bottleneck adapters with `peftkit combine`."
        )

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove one adapter from this layer."""
        super().delete_adapter(adapter_name)
        self.adapter_options.pop(adapter_name, None)

    def __repr__(self) -> str:
        """Show the wrapped layer and the adapters."""
        return f"AdapterLayer(adapters={list(self.adapter_down)}, base_layer={self.base_layer!r})"
