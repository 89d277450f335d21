"""The parallel adapter layer (see :mod:`peftkit.methods.parallel` for the method and its options).

A :class:`ParallelAdapterLayer` wraps a feed-forward block's *output* projection and adds, per
adapter name, ``scaling * up(act(down(x)))`` where ``x`` is the block's *input*. The input is
captured by a forward pre-hook on the block's first projection (which sees exactly the block
input) and consumed by the output projection in the same forward pass; gradient checkpointing's
recomputation captures it again. The layer follows peft's ``BaseTunerLayer`` conventions
(weights in ``ModuleDict``s keyed by adapter name).
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
    from torch.utils.hooks import RemovableHandle

    from peftkit.methods.parallel.options import ParallelOptions


class ParallelAdapterLayer(nn.Module, BaseTunerLayer):
    """A frozen feed-forward output projection plus parallel bottlenecks fed by the block input."""

    adapter_layer_names = ("parallel_down", "parallel_up")
    other_param_names = ("parallel_options",)

    def __init__(
        self, base_layer: nn.Module, input_layer: nn.Module, adapter_name: str, config: ParallelOptions
    ) -> None:
        """Wrap ``base_layer`` (block output) and listen to the inputs of ``input_layer`` (block input)."""
        super().__init__()
        self.base_layer = base_layer
        self.parallel_down = nn.ModuleDict()
        self.parallel_up = nn.ModuleDict()
        self.parallel_options: dict[str, dict[str, Any]] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self._block_input: torch.Tensor | None = None
        in_width = linear_width(input_layer)
        out_width = linear_width(base_layer)
        if in_width is None or out_width is None:
            raise TypeError(
                f"A parallel adapter needs linear layers at the block's input and output, got "
                f"{type(input_layer).__name__} and {type(base_layer).__name__}."
            )
        self.in_features, self.out_features = in_width[0], out_width[1]
        self.input_hook: RemovableHandle = input_layer.register_forward_pre_hook(self._capture)
        self.update_layer(adapter_name, config)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._block_input = args[0] if args and isinstance(args[0], torch.Tensor) else None

    def update_layer(self, adapter_name: str, config: ParallelOptions) -> None:
        """Add (or replace) the parallel bottleneck ``adapter_name``."""
        bottleneck = max(1, int(self.in_features // config.reduction_factor))
        weight = getattr(self.base_layer, "weight", None)
        device = weight.device if weight is not None else None
        down = nn.Linear(self.in_features, bottleneck, device=device)  # Kaiming-uniform, as LoRA's A
        up = nn.Linear(bottleneck, self.out_features, device=device)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.parallel_down[adapter_name] = down
        self.parallel_up[adapter_name] = up
        self.parallel_options[adapter_name] = bottleneck_options(config)
        self.set_adapter(self.active_adapters)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``W_out(x) + scaling * up(act(down(block_input)))`` for each active adapter."""
        block_input, self._block_input = self._block_input, None  # consumed: never kept past this pass
        out = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or block_input is None:
            return out
        for name in self.active_adapters:
            if name not in self.parallel_down:
                continue
            out = add_bottleneck(
                out,
                block_input,
                self.parallel_down[name],
                self.parallel_up[name],
                self.parallel_options[name],
            )
        return out

    def train(self, mode: bool = True) -> ParallelAdapterLayer:
        """Propagate train/eval mode to the per-adapter dropout modules too."""
        super().train(mode)
        set_dropout_mode(self.parallel_options.values(), mode)
        return self

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Parallel adapters are non-linear: they cannot be folded into a weight matrix."""
        raise MergeError(
            "A parallel adapter is non-linear (down-projection, activation, up-projection) and cannot be merged into "
            "the base weights. Keep the adapter file and load it with peftkit.load_adapter, or average several "
            "parallel adapters with `peftkit combine`."
        )

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove one adapter from this layer."""
        super().delete_adapter(adapter_name)
        self.parallel_options.pop(adapter_name, None)

    def __repr__(self) -> str:
        """Show the wrapped layer and the adapters."""
        return f"ParallelAdapterLayer(adapters={list(self.parallel_down)}, base_layer={self.base_layer!r})"
