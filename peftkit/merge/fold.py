"""Fold an adapter carried by a live model into its base weights (what peft's ``merge_and_unload`` does).

::

    LoRA / AdaLoRA layer ─merge()─► W += delta_W ─► replaced by its base layer (nn.Linear / Conv1D)
    ModulesToSaveWrapper ─────────────────────────► replaced by the adapter's trained head copy
    BottleneckLayer ──────────────────────────────► MergeError (non-linear), or dropped with head_only=True

The result is a plain transformers model: no peft modules, no peftkit state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn
from tqdm.auto import tqdm

from peftkit.errors import MergeError, QuantizationError
from peftkit.quantization.memory import is_quantized
from peftkit.registry import get_method
from peftkit.state import _STATE_ATTR, adapter_layers, require_state, unwrap_model

logger = logging.getLogger(__name__)

#: Message shared by the CLI and the Python API when an adapter cannot be folded.
NOT_MERGEABLE_HINT = (
    "Keep the adapter as it is and load it onto the base with peftkit.load_adapter(model, DIR); to mix several "
    "bottleneck adapters into one, use `peftkit combine` (parameter averaging). By default `peftkit merge` writes "
    "the base model with the trained task head folded in, but WITHOUT the adapter layers."
)


def check_not_quantized(model: nn.Module) -> None:
    """Refuse to merge into integer weights.

    Raises:
        QuantizationError: Explaining to merge into fp32/bf16 and re-quantise when loading.

    """
    if is_quantized(model):
        raise QuantizationError(
            "The base model holds 8-bit or 4-bit (bitsandbytes) weights: merging an adapter into them would round the "
            "update away. Merge into the full-precision base instead (load it without load_in_8bit / load_in_4bit; an "
            "adapter trained on a quantised base merges fine into its fp32/bf16 original), save it, and quantise at "
            "load time with peftkit.load_base(merged_dir, load_in_8bit=True) (or load_in_4bit=True)."
        )


def fold_adapter(
    model: nn.Module, adapter_name: str | None = None, *, head_only: bool = False, progress: bool = False
) -> nn.Module:
    """Fold one adapter into ``model``'s weights in place and strip every adapter module.

    Args:
        model: A model carrying a peftkit adapter (``wrap`` / ``load_adapter``), with float weights.
        adapter_name: Adapter to fold; default: the active one.
        head_only: For adapters that cannot be folded (bottleneck): keep only the trained heads and
            drop the adapter layers (outputs then differ from the adapter model's).
        progress: Show a tqdm bar over the adapted modules.

    Returns:
        The unwrapped model (same object as ``unwrap_model(model)``): a plain transformers model whose
        parameters all have ``requires_grad=True``, as after ``from_pretrained``.

    Raises:
        MergeError: The method is not mergeable (and ``head_only`` is false), or merging produced NaNs.
        QuantizationError: The model has 8-bit weights.

    """
    inner = unwrap_model(model)
    state = require_state(inner)
    name = adapter_name or state.active or next(iter(state.adapters))
    if name not in state.adapters:
        raise MergeError(f"No adapter named {name!r} on this model; adapters: {', '.join(state.adapters)}.")
    record = state.adapters[name]
    spec = get_method(record.method)
    if not spec.mergeable and not head_only:
        raise MergeError(
            f"A {record.method!r} adapter cannot be merged into the base weights: "
            f"{spec.description or 'the method is not linear'}. {NOT_MERGEABLE_HINT}"
        )
    check_not_quantized(inner)
    layers = _outermost(adapter_layers(inner))
    for module_name, module in tqdm(
        layers, desc="Merging", unit="module", disable=None if progress else True
    ):
        replacement = _fold_module(module_name, module, name, merge=spec.mergeable)
        _replace(inner, module_name, replacement)
    leftovers = [n for n, _ in adapter_layers(inner)]
    if leftovers:
        raise MergeError(f"Adapter modules remain after folding: {', '.join(leftovers[:5])}.")
    for other in state.adapters.values():  # e.g. AdaLoRA's regulariser hook on the model
        remove = getattr(other.handle, "remove", None)
        if callable(remove):
            remove()
    inner.__dict__.pop(_STATE_ATTR, None)
    inner.__dict__.pop("peft_config", None)
    for param in inner.parameters():
        param.requires_grad_(True)
    logger.info("Folded %s adapter %r into %d modules", record.method, name, len(layers))
    return inner


def _fold_module(module_name: str, module: nn.Module, adapter_name: str, *, merge: bool) -> nn.Module:
    if isinstance(module, ModulesToSaveWrapper):
        if adapter_name in module.modules_to_save:
            return module.modules_to_save[adapter_name]
        return module.original_module
    if isinstance(module, BaseTunerLayer):
        if merge and adapter_name in _adapter_keys(module):
            try:
                module.merge(safe_merge=True, adapter_names=[adapter_name])
            except ValueError as exc:  # peft's safe_merge reports NaNs with a ValueError
                raise MergeError(
                    f"Merging adapter {adapter_name!r} into {module_name!r} failed: {exc}. The adapter weights "
                    "contain NaN/inf; retrain or use an earlier checkpoint."
                ) from exc
        return module.get_base_layer()
    raise MergeError(f"Do not know how to fold {type(module).__name__} at {module_name!r}.")


def _adapter_keys(module: BaseTunerLayer) -> set[str]:
    keys: set[str] = set()
    for attr in module.adapter_layer_names:
        container = getattr(module, attr, None)
        if isinstance(container, (nn.ModuleDict, nn.ParameterDict)):
            keys.update(container.keys())
    return keys


def _replace(model: nn.Module, module_name: str, new: nn.Module) -> None:
    parent_name, _, child_name = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new)


def _outermost(layers: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    kept: list[tuple[str, nn.Module]] = []
    for name, module in layers:  # named_modules order: parents come before their children
        if not any(name.startswith(outer + ".") for outer, _ in kept):
            kept.append((name, module))
    return kept
