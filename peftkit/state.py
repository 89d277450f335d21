"""Book-keeping of the adapters that peftkit injected into a model.

The state lives in the model's ``__dict__`` (not as a sub-module) so it never shows up in
``state_dict()`` or ``named_parameters()``. Adapter parameters themselves follow peft's
convention: every adapter layer is a ``peft`` ``BaseTunerLayer`` (or a ``ModulesToSaveWrapper``
for task heads) storing its weights in ``ModuleDict``/``ParameterDict`` attributes keyed by
adapter name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftkit._peft import is_modules_to_save, is_training_wrapper, is_tuner_layer
from peftkit.errors import NotWrappedError
from peftkit.registry import PEFT_KEY_PREFIX

_STATE_ATTR = "_peftkit_state"


@dataclass
class AdapterRecord:
    """One adapter injected into a model.

    Attributes:
        name: Adapter name (``"default"`` for the first one).
        method: Registry name of the method.
        config: The validated method config.
        targets: Full names of the adapted modules.
        heads: Names of the task-head modules trained and saved with this adapter.
        handle: Whatever the method's builder returned (e.g. peft's AdaLoRA tuner), or ``None``.
        metadata: Free-form facts recorded with the adapter (e.g. the plugin package).
        trainable: Whether the adapter's weights are trained when it is active (``False`` for an
            adapter loaded for inference).

    """

    name: str
    method: str
    config: Any
    targets: list[str]
    heads: list[str]
    handle: object | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    trainable: bool = True


@dataclass
class PeftkitState:
    """All adapters of a model, the active one, and whether adapters are enabled."""

    adapters: dict[str, AdapterRecord] = field(default_factory=dict)
    active: str | None = None
    enabled: bool = True


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / ``torch.compile`` / Accelerate wrappers to reach the user's model."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def get_state(model: nn.Module) -> PeftkitState | None:
    """Return the peftkit state of ``model`` (or of the model it wraps), ``None`` if not wrapped."""
    return unwrap_model(model).__dict__.get(_STATE_ATTR)


def require_state(model: nn.Module) -> PeftkitState:
    """Like :func:`get_state` but raise :class:`NotWrappedError` if the model has no adapter."""
    state = get_state(model)
    if state is None or not state.adapters:
        raise NotWrappedError(
            f"This {type(unwrap_model(model)).__name__} carries no peftkit adapter: call "
            "peftkit.wrap(model, 'lora') or peftkit.load_adapter(model, path) first."
        )
    return state


def ensure_state(model: nn.Module) -> PeftkitState:
    """Return the model's state, creating an empty one if needed."""
    inner = unwrap_model(model)
    if _STATE_ATTR not in inner.__dict__:
        inner.__dict__[_STATE_ATTR] = PeftkitState()
    return inner.__dict__[_STATE_ATTR]


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for every adapter layer and head wrapper in the model."""
    for name, module in unwrap_model(model).named_modules():
        if is_tuner_layer(module) or is_training_wrapper(module):
            yield name, module


def adapter_parameters(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """Parameters belonging to one adapter (method weights and its head copies), by full name."""
    found: dict[str, nn.Parameter] = {}
    for module_name, module in adapter_layers(model):
        if is_modules_to_save(module):
            containers = {"modules_to_save": module.modules_to_save}
        elif is_tuner_layer(module):
            containers = {attr: getattr(module, attr, None) for attr in module.adapter_layer_names}
        else:
            continue
        for attr, container in containers.items():
            if not isinstance(container, (nn.ModuleDict, nn.ParameterDict)) or adapter_name not in container:
                continue
            item = container[adapter_name]
            prefix = f"{module_name}.{attr}.{adapter_name}"
            if isinstance(item, nn.Parameter):
                found[prefix] = item
            else:
                for param_name, param in item.named_parameters():
                    found[f"{prefix}.{param_name}"] = param
    return found


def to_peft_key(full_name: str, adapter_name: str) -> str:
    """Map a parameter's full name to its key in a PEFT adapter file.

    ``bert.encoder.layer.0.attention.self.query.lora_A.default.weight`` becomes
    ``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`` and a head copy
    ``classifier.modules_to_save.default.weight`` becomes ``base_model.model.classifier.weight``.
    """
    key = full_name.replace(f".modules_to_save.{adapter_name}.", ".")
    key = key.replace(f".{adapter_name}.", ".")
    if key.endswith(f".{adapter_name}"):
        key = key[: -len(adapter_name) - 1]
    return PEFT_KEY_PREFIX + key


def adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's weights keyed as in a PEFT file (detached, contiguous, on CPU)."""
    return {
        to_peft_key(name, adapter_name): param.detach().to("cpu").contiguous()
        for name, param in adapter_parameters(model, adapter_name).items()
    }


def peft_key_map(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """PEFT file key -> live parameter, for loading an adapter's weights."""
    return {to_peft_key(name, adapter_name): p for name, p in adapter_parameters(model, adapter_name).items()}


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """All parameters with ``requires_grad=True``, by full name."""
    return {name: p for name, p in unwrap_model(model).named_parameters() if p.requires_grad}
