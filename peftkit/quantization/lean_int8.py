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

On the CPU in training mode bitsandbytes' forward is ``x @ dequant(W).T`` with a freshly allocated
dequantised weight (``MatMul8bitFp``); here the same operations write it into one per-thread
scratch buffer instead, for the forward and the backward alike. Fresh multi-megabyte buffers at
every matmul fragment glibc's heap: the resident set of a 1.1B 8-bit LoRA step grew by hundreds of
megabytes that were free but never returned.

The layer stays a ``bnb.nn.Linear8bitLt`` (peft's dispatch and its ``lora.bnb`` wrappers keep working;
state dicts are unchanged). Inference forwards are bitsandbytes' own, untouched.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from peftkit.quantization import activations

logger = logging.getLogger(__name__)


def _import_bnb() -> Any:
    from peftkit.quantization.fast_int8 import import_bitsandbytes

    return import_bitsandbytes()


def wants_grad(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd needs this layer's forward: grad mode on and the input or a trained bias requires grad."""
    bias = layer.bias
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def _codes(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 codes ``CB`` ``(out, in)`` and row absmax ``SCB`` of a quantised layer."""
    state = layer.state
    cb = state.CB if state.CB is not None else layer.weight.CB
    scb = state.SCB if state.SCB is not None else layer.weight.SCB
    if cb is None:  # bitsandbytes moved them to the state and cleared it: the weight holds the codes
        cb = layer.weight.data
    return cb, scb


def dequantized_weight(layer: nn.Module, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """``CB * SCB / 127`` of an 8-bit layer, ``(out, in)`` in ``dtype``: bitsandbytes' own dequantisation.

    Args:
        layer: A quantised ``bnb.nn.Linear8bitLt``.
        dtype: The result's dtype.
        out: A buffer of that shape and dtype to write into (default: a fresh tensor on the layer's device).

    """
    cb, scb = _codes(layer)
    weight = cb.to(dtype) if out is None else out.copy_(cb)
    return weight.mul_(scb.unsqueeze(1).mul(1.0 / 127.0))


_SCRATCH = activations._Workspace()


def _cpu_training_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run bitsandbytes' CPU training forward (``MatMul8bitFp``) with its dequantised weight in a scratch buffer."""
    if layer.weight.CB is not None:
        layer.init_8bit_state()  # what bitsandbytes' forward does first
    weight = dequantized_weight(
        layer, x.dtype, _SCRATCH.get("dequant", (layer.out_features, layer.in_features), x.dtype)
    )
    bias = layer.bias
    return nn.functional.linear(x, weight, None if bias is None else bias.to(x.dtype))


class LeanInt8Function(torch.autograd.Function):
    """bitsandbytes' 8-bit forward; a backward that needs only the (frozen) weight."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, layer: nn.Module) -> torch.Tensor:
        """Run bitsandbytes' own forward of ``layer``; keep only the layer and the input's dtype/shape are kept."""
        bnb = _import_bnb()
        ctx.layer = layer
        ctx.input_dtype, ctx.input_shape = x.dtype, x.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        if x.device.type == "cpu" and layer.training:
            return _cpu_training_forward(layer, x)
        return bnb.nn.Linear8bitLt.forward(layer, x)  # grad mode is off in here: bitsandbytes keeps nothing

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        """``grad_out @ dequant(W)`` for the input, the row sum for a trained bias."""
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            dtype = ctx.input_dtype if ctx.input_dtype in (torch.float16, torch.bfloat16) else torch.float32
            layer = ctx.layer
            scratch = None
            if grad_2d.device.type == "cpu":
                scratch = _SCRATCH.get("dequant", (layer.out_features, layer.in_features), dtype)
            weight = dequantized_weight(layer, dtype, scratch)
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
