"""AdaLoRA's layers on LoRA's fast path (:mod:`peftkit.methods.lora.fast`).

peft's ``SVDLinear`` computes ``base(x) + (dropout(x) @ (A * E)^T @ B^T) * scaling / (ranknum + 1e-5)``:
two output-sized passes for the scaling and the division, and their backward. The same update is
LoRA's with ``A' = A * E`` (``r x in``) and ``B' = B * scaling / (ranknum + 1e-5)`` (``out x r``),
both tiny, so it goes through LoRA's fused node; ``ranknum`` stays a tensor (no device sync on
CUDA). Only ``forward`` changes (:class:`FastSVDLinear` subclasses peft's ``SVDLinear``): the rank
allocator, masking, ``merge()`` and files are peft's. A call falls back to peft's forward where
LoRA's would (merged, disabled, several adapters, extra arguments, autocast, mixed dtypes, hooks).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.adalora.layer import SVDLinear
from torch import nn

from peftkit.methods.lora.fast import (
    base_weight_t,
    fusable,
    fused_lora_forward,
    single_active_adapter,
    swap_class,
)


class FastSVDLinear(SVDLinear):
    """peft's AdaLoRA ``SVDLinear`` whose forward takes LoRA's fused node when it applies."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The layer's output: one fused autograd node when it applies, else peft's forward."""
        adapter = None if args or kwargs else self._fast_adapter(x)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        lora_a = self.lora_A[adapter] * self.lora_E[adapter]
        lora_b = self.lora_B[adapter] * (self.scaling[adapter] / (self.ranknum[adapter] + 1e-5))
        weight_t = base_weight_t(self.base_layer)
        return fused_lora_forward(
            x, self.base_layer, weight_t, lora_a, lora_b, 1.0, self.lora_dropout[adapter]
        )

    def _fast_adapter(self, x: torch.Tensor) -> str | None:
        """The single active adapter if the fused node computes this call as peft would, else ``None``."""
        adapter = single_active_adapter(self)
        if adapter is None:
            return None
        weight_t = base_weight_t(self.base_layer)
        if weight_t is None:
            return None
        tensors = (
            weight_t,
            self.base_layer.bias,
            self.lora_A[adapter],
            self.lora_B[adapter],
            self.lora_E[adapter],
        )
        if not fusable(x, self.lora_dropout[adapter], *tensors, self.ranknum[adapter]):
            return None
        return adapter


def enable_fast_adalora(model: nn.Module, enabled: bool = True) -> int:
    """Switch every peft ``SVDLinear`` of ``model`` to :class:`FastSVDLinear` (or back); returns how many."""
    return swap_class(model, SVDLinear, FastSVDLinear, enabled)


__all__ = ["FastSVDLinear", "enable_fast_adalora"]
