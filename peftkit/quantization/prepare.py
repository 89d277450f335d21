"""Make a freshly loaded 8-bit or 4-bit base ready for adapter training.

What peft's ``prepare_model_for_kbit_training`` does, minus what costs memory or gets in the way:
peft freezes *every* parameter (task heads included), up-casts every fp16/bf16 parameter outside
the quantised layers to fp32 (embeddings and LM head included: for a 1.1B Llama that is 0.5 GB
more than the bf16 copies, and fp32 activations after them), and enables input gradients only
together with gradient checkpointing. Here the frozen weights keep the compute dtype they were
loaded in, only the trainable task heads are kept in fp32 (:func:`train_in_full_precision`, a small
copy), and the input embeddings' output requires grad in training mode, so that gradients reach
adapters behind frozen embeddings even with (reentrant) gradient checkpointing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_HOOK_ATTR = "_peftkit_input_grad_hook"
_HALF = (torch.float16, torch.bfloat16)


def train_in_full_precision(module: nn.Module) -> None:
    """Keep a trained module (a task head) in fp32 on a half-precision base: cast it, and its inputs on the way in.

    Optimiser updates of a bf16 weight round away most small steps, and the head is small: its fp32
    copy costs little. A module already in fp32 is left as it is.
    """
    if not any(param.dtype in _HALF for param in module.parameters()):
        return
    module.float()
    module.register_forward_pre_hook(_half_inputs_to_fp32)


def _half_inputs_to_fp32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(arg.float() if isinstance(arg, torch.Tensor) and arg.dtype in _HALF else arg for arg in args)


def _inputs_require_grad(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    # Only while training with autograd on: in eval/no-grad mode the embeddings' output stays a
    # plain tensor, so 8-bit layers behind it can take the fast inference path.
    if module.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
        if output.is_floating_point() and not output.requires_grad:
            output.requires_grad_(True)


def enable_input_require_grads(model: nn.Module) -> bool:
    """Make the input embeddings' output require grad during training (idempotent).

    Returns:
        Whether a hook is installed (``False`` for a model without input embeddings).

    """
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if embeddings is None:
        return False
    if getattr(embeddings, _HOOK_ATTR, None) is None:
        setattr(embeddings, _HOOK_ATTR, embeddings.register_forward_hook(_inputs_require_grad))
    return True


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on non-reentrant gradient (activation) checkpointing on a transformers model."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:  # older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # caching is useless and warned about under checkpointing
    logger.info("gradient checkpointing on (non-reentrant): activations are recomputed in the backward pass")


def prepare_for_kbit_training(
    model: nn.Module, trainable_heads: Iterable[str], gradient_checkpointing: bool = False
) -> nn.Module:
    """Freeze a quantised base except its task heads and enable gradient flow into future adapters.

    Nothing is up-cast: frozen weights keep the dtype they were loaded in (the compute dtype), and
    only the trainable heads are made fp32.

    Args:
        model: A model loaded with bitsandbytes 8-bit or 4-bit layers.
        trainable_heads: Top-level module names kept trainable (e.g. ``["classifier"]``).
        gradient_checkpointing: Also enable non-reentrant gradient checkpointing.

    Returns:
        ``model``, modified in place.

    """
    heads = tuple(trainable_heads)
    for name, param in model.named_parameters():
        in_head = any(name == head or name.startswith(head + ".") for head in heads)
        param.requires_grad_(in_head and param.is_floating_point())
    for head in heads:
        train_in_full_precision(model.get_submodule(head))
    enable_input_require_grads(model)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    logger.debug(
        "prepared quantised base: trainable heads %s, checkpointing %s", heads, gradient_checkpointing
    )
    return model
