"""Training state that adapter methods keep outside ``state_dict()``, for exact resumption.

AdaLoRA's rank allocator keeps exponential moving averages of every adapter weight's
sensitivity and the rank pattern it has allocated so far. They are plain Python attributes,
invisible to ``model.state_dict()`` and to ``accelerator.save_state``; without them a resumed
AdaLoRA run prunes different singular values than an uninterrupted one.

A method handle (what a method's builder returns, see :mod:`peftkit.registry`) can take part
by defining ``training_state() -> dict`` and ``load_training_state(dict)``; values may be
tensors (stored with safetensors) or JSON-serialisable objects. peft's AdaLoRA handle is
supported without that protocol by reading its ``tuner.rankallocator``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_SEP = "::"
_EMA_FIELDS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def _handles(model: nn.Module) -> dict[str, object]:
    from peftkit.state import get_state

    state = get_state(model)
    if state is None:
        return {}
    return {name: rec.handle for name, rec in state.adapters.items() if rec.handle is not None}


def _adalora_state(handle: Any) -> dict[str, Any] | None:
    allocator = getattr(getattr(handle, "tuner", None), "rankallocator", None)
    if allocator is None:
        return None
    out: dict[str, Any] = {}
    for field in _EMA_FIELDS:
        for name, tensor in getattr(allocator, field).items():
            out[f"{field}{_SEP}{name}"] = tensor
    out["rank_pattern"] = handle.peft_config.rank_pattern
    out["last_step"] = getattr(handle, "last_step", None)
    return out


def _load_adalora_state(handle: Any, values: dict[str, Any]) -> None:
    allocator = handle.tuner.rankallocator
    allocator.reset_ipt()
    for key, value in values.items():
        field, sep, name = key.partition(_SEP)
        if sep and field in _EMA_FIELDS:
            getattr(allocator, field)[name] = value
    handle.peft_config.rank_pattern = values.get("rank_pattern")
    if values.get("last_step") is not None:
        handle.last_step = values["last_step"]


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
        if callable(getattr(handle, "training_state", None)):
            state = handle.training_state()
        else:
            state = _adalora_state(handle)
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
    for adapter, state in per_adapter.items():
        handle = handles.get(adapter)
        if handle is None:
            continue
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        state = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        if callable(getattr(handle, "load_training_state", None)):
            handle.load_training_state(state)
        elif getattr(getattr(handle, "tuner", None), "rankallocator", None) is not None:
            _load_adalora_state(handle, state)
