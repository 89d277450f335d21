"""Make a freshly loaded 8-bit base ready for adapter training.

What peft's ``prepare_model_for_kbit_training`` does, minus what it gets wrong for us: it freezes
*every* parameter (task heads included) and only enables input gradients together with gradient
checkpointing. Here the task heads stay trainable, the rest of the model is frozen, fp16/bf16
parameters outside the int8 layers are upcast to fp32, and the input embeddings' output requires
grad in training mode, so that gradients reach adapters behind frozen embeddings even with
(reentrant) gradient checkpointing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

_HOOK_ATTR = "_peftkit_input_grad_hook"


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


def prepare_for_kbit_training(
    model: nn.Module, trainable_heads: Iterable[str], gradient_checkpointing: bool = False
) -> nn.Module:
    """Freeze an 8-bit base except its task heads and enable gradient flow into future adapters.

    Args:
        model: A model loaded with bitsandbytes 8-bit layers.
        trainable_heads: Top-level module names kept trainable (e.g. ``["classifier"]``).
        gradient_checkpointing: Also enable non-reentrant gradient checkpointing.

    Returns:
        ``model``, modified in place.

    """
    heads = tuple(trainable_heads)
    for name, param in model.named_parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)
        in_head = any(name == head or name.startswith(head + ".") for head in heads)
        param.requires_grad_(in_head and param.is_floating_point())
    enable_input_require_grads(model)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    logger.debug("prepared 8-bit base: trainable heads %s, checkpointing %s", heads, gradient_checkpointing)
    return model
