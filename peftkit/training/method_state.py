"""Training state that adapter methods keep outside ``state_dict()``, for exact resumption.

Some methods keep state that ``model.state_dict()`` and ``accelerator.save_state`` never see
(AdaLoRA's rank allocator: moving averages of every weight's sensitivity, and the rank pattern
allocated so far); without it a resumed run diverges from an uninterrupted one. A method takes
part through its handle (what its builder returns, see :class:`peftkit.registry.MethodHandle`):
``training_state() -> dict`` and ``load_training_state(dict)``; values may be tensors (stored with
safetensors) or JSON-serialisable objects.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.state import get_state

_SEP = "::"


def _handles(model: nn.Module) -> dict[str, object]:
    state = get_state(model)
    if state is None:
        return {}
    return {name: rec.handle for name, rec in state.adapters.items() if rec.handle is not None}


def collect_method_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Gather the extra training state of every adapter of ``model``.

    Args:
        model: The unwrapped model.

    Returns:
        ``(tensors, values)``: tensors keyed ``"<adapter>::<key>"`` (for safetensors) and the
        JSON-serialisable rest, keyed by adapter then key.

    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for adapter, handle in _handles(model).items():
        state = handle.training_state() if callable(getattr(handle, "training_state", None)) else None
        if not state:
            continue
        values[adapter] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{adapter}{_SEP}{key}"] = value.detach().to("cpu").contiguous()
            else:
                values[adapter][key] = value
    return tensors, values


def restore_method_state(model: nn.Module, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    """Put state gathered by :func:`collect_method_state` back into the adapters of ``model``."""
    handles = _handles(model)
    per_adapter: dict[str, dict[str, Any]] = {name: dict(v) for name, v in values.items()}
    for key, tensor in tensors.items():
        adapter, _, rest = key.partition(_SEP)
        per_adapter.setdefault(adapter, {})[rest] = tensor
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for adapter, state in per_adapter.items():
        handle = handles.get(adapter)
        if handle is None or not callable(getattr(handle, "load_training_state", None)):
            continue
        handle.load_training_state(
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        )
