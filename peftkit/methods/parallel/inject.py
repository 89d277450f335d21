"""Injecting parallel adapters: pair each feed-forward output projection with the block's input projection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from peftkit.errors import InvalidOptionError
from peftkit.targets import default_targets, matches, resolve_targets

if TYPE_CHECKING:
    from peftkit.methods.parallel.layer import ParallelAdapterLayer
    from peftkit.methods.parallel.options import ParallelOptions


class ParallelHandle:
    """Removes the input hooks this adapter installed (when the adapter is folded away or deleted)."""

    def __init__(self, layers: list[ParallelAdapterLayer]) -> None:
        """Keep the layers whose input hooks this adapter created."""
        self.layers = layers

    def remove(self) -> None:
        """Detach the block-input hooks."""
        for layer in self.layers:
            layer.input_hook.remove()


def _common_depth(a: str, b: str) -> int:
    depth = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        depth += 1
    return depth


def pair_inputs(model: nn.Module, outputs: list[str], input_patterns: list[str] | str) -> dict[str, str]:
    """Output projection name -> the input projection of the same block (longest common parent).

    Raises:
        InvalidOptionError: An output projection has no input projection in its block.

    """
    inputs = [
        n for n, _ in model.named_modules() if n and ".base_layer" not in n and matches(n, input_patterns)
    ]
    pairs = {}
    for name in outputs:
        best = max(inputs, key=lambda candidate: _common_depth(name, candidate), default=None)
        parent = name.rsplit(".", 1)[0].rsplit(".", 1)[0]  # the block holding the output projection
        if best is None or _common_depth(name, best) < parent.count(".") + 1:
            raise InvalidOptionError(
                f"No block-input projection matching input_modules={input_patterns!r} was found next to {name!r}; "
                "pass input_modules=[...] naming the first linear layer of the same feed-forward block."
            )
        pairs[name] = best
    return pairs


def build_parallel(
    model: nn.Module, config: ParallelOptions, adapter_name: str, targets: list[str] | str
) -> ParallelHandle:
    """Scaled parallel bottlenecks reading the feed-forward block's input, added to its output."""
    from peftkit.methods.parallel.layer import ParallelAdapterLayer  # imports peft: only when building

    outputs = resolve_targets(model, targets)
    input_patterns = (
        config.input_modules if config.input_modules is not None else default_targets(model, "ffn_input")
    )
    pairs = pair_inputs(model, outputs, input_patterns)
    created = []
    for name in outputs:
        module = model.get_submodule(name)
        if isinstance(module, ParallelAdapterLayer):
            module.update_layer(adapter_name, config)
            continue
        layer = ParallelAdapterLayer(module, model.get_submodule(pairs[name]), adapter_name, config)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, layer)
        created.append(layer)
    return ParallelHandle(created)
