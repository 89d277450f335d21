"""Injecting bottleneck adapters after the target output projections."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from peftkit.methods.adapter.options import PLACEMENTS
from peftkit.targets import default_targets, resolve_targets

if TYPE_CHECKING:
    from peftkit.methods.adapter.options import AdapterOptions


def placement_targets(model: nn.Module, config: AdapterOptions) -> list[str] | str:
    """The sub-layer output projections of the configured placement."""
    return default_targets(model, *PLACEMENTS[config.placement])


def build_adapter(
    model: nn.Module, config: AdapterOptions, adapter_name: str, targets: list[str] | str
) -> None:
    """Bottleneck adapters after sub-layer outputs (Houlsby or Pfeiffer placement)."""
    from peftkit.methods.adapter.layer import AdapterLayer  # imports peft: only when building

    chosen = resolve_targets(model, targets)
    for name in chosen:
        module = model.get_submodule(name)
        if isinstance(module, AdapterLayer):
            module.update_layer(adapter_name, config)
            continue
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, AdapterLayer(module, adapter_name, config))


placement_targets.roles = PLACEMENTS["houlsby"]  # type: ignore[attr-defined]  # the default placement's, for `peftkit methods`
