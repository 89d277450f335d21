"""A cheaper forward and backward for peft's LoRA ``Linear`` layers, with the same numbers.

peft computes ``y = base(x) + lora_B(lora_A(dropout(x))) * scaling``: next to the two small
GEMMs, every call adds two output-sized passes (the scaling and the sum) in the forward, two in
the backward (the scaling's backward and the sum of the input's two gradients), and one autograd
node per operation. The fast path computes the same thing in one autograd node per layer::

    forward                                     backward (g = dL/dy)
    y = bias + x @ Wt          (one GEMM)       gBs = (g @ B) * s                 (N x r, small)
    h = x' @ A^T               (N x r)          dx  = g @ Wt^T ; dx += gBs @ A    (in place)
    y += s * h @ B^T           (in place)       dA  = gBs^T @ x' ; dB = s * g^T @ h

``x'`` is ``dropout(x)`` (the layer's own dropout module, so the random mask is peft's), and ``x``
itself when the dropout is an identity (``p = 0`` or eval mode): no copy. The scaling rides on
the GEMMs' ``alpha`` or on ``N x r`` tensors, never on an output-sized one. Parameters, module
layout, ``merge()`` and files are peft's: only the class of each ``peft.tuners.lora.Linear`` is
swapped for :class:`FastLoraLinear`, a subclass that overrides ``forward`` alone.

A call takes peft's own forward (``super().forward``) whenever the fast path does not apply:
adapters disabled or merged, no or several active adapters, a LoRA variant (DoRA, ...), a LoRA
bias, extra arguments (``adapter_names``), autocast, mixed dtypes, a trainable base weight, or a
base layer that is not a plain ``nn.Linear`` / GPT-2 ``Conv1D`` (8-bit / 4-bit layers have their
own peft classes and are never swapped) or carries hooks.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn


class _LoraLinearFunction(torch.autograd.Function):
    """``y = bias + x @ wt + scale * (x_lora @ A^T) @ B^T`` on 2-D inputs, in one autograd node."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        x_lora: torch.Tensor | None,
        weight_t: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        shared = x_lora is None
        xl = x if shared else x_lora
        out, h = lora_linear(x, xl, weight_t, bias, lora_a, lora_b, scale)
        ctx.shared, ctx.scale = shared, scale
        ctx.save_for_backward(xl, h, weight_t, lora_a, lora_b)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xl, h, weight_t, lora_a, lora_b = ctx.saved_tensors
        need_x, need_xl, _, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        grad_x = grad_xl = grad_bias = grad_a = grad_b = None
        grad = grad.contiguous()
        if need_x or need_xl or need_a:
            grad_h = torch.mm(grad, lora_b).mul_(ctx.scale)  # N x r: the scaling costs nothing here
            if need_x:
                grad_x = torch.mm(grad, weight_t.t())
                if ctx.shared:
                    grad_x.addmm_(grad_h, lora_a)  # the LoRA branch's input gradient, accumulated in place
            if need_xl:
                grad_xl = torch.mm(grad_h, lora_a)
            if need_a:
                grad_a = torch.mm(grad_h.t(), xl)
        if need_b:  # (h^T @ g)^T: reads g row by row, ~1.5x faster on CPU than g^T @ h for wide layers
            grad_b = torch.mm(h.t(), grad).mul_(ctx.scale).t()
        if need_bias:
            grad_bias = grad.sum(0)
        return grad_x, grad_xl, None, grad_bias, grad_a, grad_b, None


def lora_linear(
    x: torch.Tensor,
    x_lora: torch.Tensor,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast path's forward on 2-D tensors, without autograd.

    Args:
        x: Input, ``N x in``.
        x_lora: Input of the LoRA branch (``x`` after dropout), ``N x in``.
        weight_t: Base weight as ``in x out`` (``W.t()`` of an ``nn.Linear``, a ``Conv1D``'s own weight).
        bias: Base bias (``out``) or ``None``.
        lora_a: ``r x in``.
        lora_b: ``out x r``.
        scale: ``alpha / r`` (or rsLoRA's ``alpha / sqrt(r)``).

    Returns:
        ``(y, h)``: the output ``N x out`` and the LoRA branch's inner activation ``x_lora @ A^T`` (``N x r``).

    """
    out = torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)
    h = torch.mm(x_lora, lora_a.t())
    out.addmm_(h, lora_b.t(), alpha=scale)
    return out, h


def base_weight_t(base: nn.Module) -> torch.Tensor | None:
    """The base layer's frozen weight as ``in x out``, or ``None`` where the fast path must not replace its forward.

    Only a plain ``nn.Linear`` or GPT-2 ``Conv1D`` without hooks (e.g. Accelerate's offloading
    ``_hf_hook``, which expects the layer's own forward to run) and with a frozen weight (the fused
    node computes no weight gradient) qualifies.
    """
    kind = type(base)
    if kind is nn.Linear:
        weight_t = base.weight.t()
    elif kind is _conv1d_class():
        weight_t = base.weight
    else:
        return None
    return weight_t if not weight_t.requires_grad and _no_hooks(base) else None


def fusable(x: torch.Tensor, dropout: nn.Module, *tensors: torch.Tensor | None) -> bool:
    """Whether the fused node computes what peft computes for input ``x``, a dropout module and the weights.

    Every tensor must share ``x``'s floating dtype and device (peft would cast: it keeps that case),
    autocast must be off (it would cast inside the GEMMs), and the dropout must be an identity or a
    plain, not in-place ``nn.Dropout`` (called as peft calls it, so the random masks are peft's).
    """
    kind = type(dropout)
    if kind is not nn.Identity and (kind is not nn.Dropout or (dropout.training and dropout.inplace)):
        return False
    dtype, device = x.dtype, x.device
    if not dtype.is_floating_point or device.type not in ("cpu", "cuda"):
        return False
    if any(t is not None and (t.dtype != dtype or t.device != device) for t in tensors):
        return False
    return not torch.is_autocast_enabled(device.type)


def fused_lora_forward(
    x: torch.Tensor,
    base: nn.Module,
    weight_t: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    dropout: nn.Module,
) -> torch.Tensor:
    """``base(x) + scale * lora_b @ lora_a @ dropout(x)`` for any leading shape, in one autograd node.

    Args:
        x: Input, ``... x in``.
        base: The base layer (its bias is added; ``weight_t`` is its weight as ``in x out``).
        weight_t: From :func:`base_weight_t`.
        lora_a: ``r x in`` (may itself be computed, e.g. AdaLoRA's ``A * E``).
        lora_b: ``out x r``.
        scale: Multiplies the low-rank product.
        dropout: The adapter's dropout module (an identity in eval mode or at ``p = 0``: no copy).

    Returns:
        ``... x out``.

    """
    x_lora = x if type(dropout) is nn.Identity or not dropout.training else dropout(x)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    xl2 = None if x_lora is x else x_lora.reshape(-1, shape[-1])
    bias = base.bias
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x2, xl2, weight_t, bias, lora_a, lora_b)
    ):
        out = _LoraLinearFunction.apply(x2, xl2, weight_t, bias, lora_a, lora_b, scale)
    else:
        out, _ = lora_linear(x2, x2 if xl2 is None else xl2, weight_t, bias, lora_a, lora_b, scale)
    return out.view(*shape[:-1], out.shape[-1])


def _conv1d_class() -> type | None:
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def _no_hooks(module: nn.Module) -> bool:
    return not (
        module._forward_hooks
        or module._forward_pre_hooks
        or getattr(module, "_hf_hook", None) is not None
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
    )


def single_active_adapter(layer: nn.Module) -> str | None:
    """The one active adapter a tuner layer would apply, if it is unmerged and enabled; else ``None``."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    return active[0] if len(active) == 1 else None


class FastLoraLinear(PeftLoraLinear):
    """peft's LoRA ``Linear`` with a cheaper forward/backward (see the module docstring).

    Only ``forward`` differs; ``isinstance(layer, peft.tuners.lora.Linear)`` still holds, and
    everything else (``merge``, ``set_adapter``, ``state_dict`` keys) is peft's.
    """

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The LoRA layer's output: one fused autograd node when it applies, else peft's forward."""
        plan = None if args or kwargs else self._fast_plan(x)
        if plan is None:
            return super().forward(x, *args, **kwargs)
        _, base, weight_t, lora_a, lora_b, scale, dropout = plan
        return fused_lora_forward(x, base, weight_t, lora_a, lora_b, scale, dropout)

    def _fast_adapter(self, x: torch.Tensor) -> str | None:
        """The single active adapter if the fast path computes this call exactly as peft would, else ``None``."""
        plan = self._fast_plan(x)
        return None if plan is None else plan[0]

    def _fast_plan(self, x: torch.Tensor) -> tuple[Any, ...] | None:
        """``(adapter, base, weight_t, A, B, scale, dropout)`` for the fused node, or ``None`` for peft's forward.

        Each attribute is looked up once: ``nn.Module.__getattr__`` is slow, and this runs at every call
        of every adapted layer (the Python cost of a layer bounds a GPU step as much as its kernels).
        """
        adapter = single_active_adapter(self)
        if adapter is None or adapter in self.lora_variant or self.lora_bias.get(adapter, False):
            return None
        base = self.base_layer
        weight_t = base_weight_t(base)
        if weight_t is None:
            return None
        lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        dropout = self.lora_dropout[adapter]
        if not fusable(x, dropout, weight_t, base.bias, lora_a, lora_b):
            return None
        return adapter, base, weight_t, lora_a, lora_b, float(self.scaling[adapter]), dropout


def enable_fast_lora(model: nn.Module, enabled: bool = True) -> int:
    """Switch every peft LoRA ``Linear`` of ``model`` to the fast path (or back to peft's forward).

    Only layers of exactly peft's ``Linear`` class are switched (8-bit / 4-bit layers, embeddings
    and convolutions keep their own classes); calls the fast path cannot compute exactly fall back
    to peft's forward on their own.

    Args:
        model: A model carrying peft LoRA layers.
        enabled: ``False`` restores peft's class (for comparisons).

    Returns:
        The number of layers switched.

    """
    return swap_class(model, PeftLoraLinear, FastLoraLinear, enabled)


def swap_class(model: nn.Module, peft_class: type, fast_class: type, enabled: bool) -> int:
    """Give every module of exactly ``peft_class`` the class ``fast_class`` (or back); returns how many.

    ``fast_class`` must be a subclass that overrides ``forward`` alone, so the swap keeps every
    parameter, buffer and peft method of the module.
    """
    source, target = (peft_class, fast_class) if enabled else (fast_class, peft_class)
    switched = 0
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
            switched += 1
    return switched


def uses_fast_lora(module: nn.Module) -> bool:
    """Whether ``module`` is a LoRA layer switched to the fast path."""
    return isinstance(module, FastLoraLinear)


__all__ = [
    "FastLoraLinear",
    "base_weight_t",
    "enable_fast_lora",
    "fusable",
    "fused_lora_forward",
    "lora_linear",
    "single_active_adapter",
    "swap_class",
    "uses_fast_lora",
]
