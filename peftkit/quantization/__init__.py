"""Quantised (bitsandbytes) bases: 8-bit and 4-bit NF4 loading with unquantised heads, and a fast int8 CPU path.

::

    from peftkit.quantization import load_base, describe_int8_paths
    model = load_base(path, task="token-classification", num_labels=9, load_in_8bit=True)
    model = load_base(path, task="causal-lm", load_in_8bit=True, dtype=torch.bfloat16)  # saves memory
    model = load_base(path, task="causal-lm", load_in_4bit=True)   # NF4, bf16 compute (QLoRA)
    model = peftkit.wrap(model, "lora")            # train adapters on the frozen quantised base
    with torch.inference_mode():
        logits = model(**batch).logits             # CPU, 8-bit, fp32: int8 GEMM path, ~2x the fp32 linear speed
    describe_int8_paths(model)                     # {'fast_int8': 36, 'bnb_fallback': 0, ...}
"""

from __future__ import annotations

from peftkit.quantization.fast_int8 import describe_int8_paths, enable_fast_int8
from peftkit.quantization.loading import TASKS, load_base, skip_modules
from peftkit.quantization.memory import LinearWeightBytes, is_quantized, quantized_linear_bytes

__all__ = [
    "TASKS",
    "LinearWeightBytes",
    "describe_int8_paths",
    "enable_fast_int8",
    "is_quantized",
    "load_base",
    "quantized_linear_bytes",
    "skip_modules",
]
