r"""Training forwards of 8-bit layers that keep no activation alive: bitsandbytes' kernels, a lean backward.

bitsandbytes' int8 matmuls (``MatMul8bitLt`` on CUDA, ``MatMul8bitFp`` on the CPU) store their input
on the autograd context as a plain attribute (``ctx.A`` / ``ctx.tensors``) whenever it requires grad,
which it does behind any adapter. The frozen weight never needs it (only its gradient would), and
because it is not a *saved tensor*, gradient checkpointing cannot drop it either: every 8-bit
layer's input stays alive for the whole forward. For a 1.1B Llama at batch 4 x 256 that is about
0.5 GB, checkpointing or not: more than the 8-bit weights save over bf16 at that size.

:func:`enable_lean_training` switches each ``bnb.nn.Linear8bitLt``'s class, in place, to a subclass
whose forward, when a gradient is wanted, runs bitsandbytes' own forward (same kernels, same outlier
handling, same numbers) inside an autograd function that saves nothing but the layer::

    forward   out = bnb.nn.Linear8bitLt.forward(layer, x)      (under no_grad: no context kept)
    backward  grad_x = grad_out @ dequant(W)                    (bitsandbytes' straight-through gradient)
              grad_bias = grad_out.sum(0)                       (if the bias is trained)

The layer stays a ``bnb.nn.Linear8bitLt`` (peft's dispatch and its ``lora.bnb`` wrappers keep working;
state dicts are unchanged). Inference forwards are bitsandbytes' own, untouched.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _import_bnb() -> Any:
    from peftkit.quantization.fast_int8 import import_bitsandbytes

    return import_bitsandbytes()


def wants_grad(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd needs this layer's forward: grad mode on and the input or a trained bias requires grad."""
    bias = layer.bias
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def dequantized_weight(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``CB * SCB / 127`` of an 8-bit layer, ``(out, in)`` in ``dtype`` (a fresh tensor on the layer's device)."""
    state = layer.state
    cb = state.CB if state.CB is not None else layer.weight.CB
    scb = state.SCB if state.SCB is not None else layer.weight.SCB
    if cb is None:  # not initialised yet: the weight itself holds the codes
        cb, scb = layer.weight.data, layer.weight.SCB
    return cb.to(dtype).mul_((scb.to(torch.float32) / 127.0).to(dtype).unsqueeze(1))


class LeanInt8Function(torch.autograd.Function):
    """bitsandbytes' 8-bit forward; a backward that needs only the (frozen) weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, layer: nn.Module) -> torch.Tensor:
        """Run bitsandbytes' own forward of ``layer``; keep only the layer and the input's dtype/shape are kept."""
        bnb = _import_bnb()
        ctx.layer = layer
        ctx.input_dtype, ctx.input_shape = x.dtype, x.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        return bnb.nn.Linear8bitLt.forward(layer, x)  # grad mode is off in here: bitsandbytes keeps nothing

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        """``grad_out @ dequant(W)`` for the input, the row sum for a trained bias."""
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            dtype = ctx.input_dtype if ctx.input_dtype in (torch.float16, torch.bfloat16) else torch.float32
            weight = dequantized_weight(ctx.layer, dtype)
            grad_x = (grad_2d.to(dtype) @ weight).view(ctx.input_shape).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            grad_bias = grad_2d.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_bias, None


@functools.cache
def lean_linear_class() -> type:
    """The ``bnb.nn.Linear8bitLt`` subclass whose training forward keeps no activation (created on first use)."""
    bnb = _import_bnb()

    class LeanInt8Linear(bnb.nn.Linear8bitLt):
        """``bnb.nn.Linear8bitLt`` whose forward under autograd saves no activation.

        Not constructed directly: :func:`enable_lean_training` switches the class of existing layers.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if wants_grad(self, x) and x.is_floating_point() and x.numel():
                return LeanInt8Function.apply(x, self.bias, self)
            return bnb.nn.Linear8bitLt.forward(self, x)

    LeanInt8Linear.__module__ = __name__
    return LeanInt8Linear


def enable_lean_training(model: nn.Module) -> int:
    """Switch every plain ``bnb.nn.Linear8bitLt`` of ``model`` to :func:`lean_linear_class`, in place.

    Layers already switched (to this class or to the fast int8 path's, which is lean too) are left
    as they are.

    Returns:
        The number of layers switched.

    """
    bnb = _import_bnb()
    lean = lean_linear_class()
    count = 0
    for module in model.modules():
        if type(module) is bnb.nn.Linear8bitLt:
            module.__class__ = lean
            count += 1
    return count
