"""Bytes on disk and in memory: adapter files, the base checkpoint, 8-bit linear weights."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def base_checkpoint_bytes(model_path: str) -> int:
    """Size of the base model's weight file(s) in ``model_path`` (sharded files summed)."""
    root = Path(model_path)
    files = [root / name for name in WEIGHT_FILES if (root / name).exists()]
    files = files[:1] or sorted(root.glob("model-*.safetensors"))
    return sum(f.stat().st_size for f in files)


def adapter_file_bytes(model: nn.Module, method: str) -> dict[str, Any]:
    """Bytes of what must be stored to reproduce the fine-tuned model, saved in a temporary directory.

    * peftkit methods: :func:`peftkit.save_adapter` (``adapter_model.safetensors`` + configs).
    * ``peft-lora``: ``save_pretrained`` of the peft model.
    * ``full``: every parameter as safetensors (the whole model is the "adapter").

    Returns:
        ``{"weights_bytes": ..., "dir_bytes": ..., "how": ...}``.

    """
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
        out = Path(tmp) / "adapter"
        if method == "full":
            from safetensors.torch import save_file

            out.mkdir()
            tensors = {name: p.detach().contiguous() for name, p in model.state_dict().items()}
            save_file(tensors, str(out / "model.safetensors"))
            how, weights = "safetensors of all parameters", out / "model.safetensors"
        elif method == "peft-lora":
            model.save_pretrained(str(out))
            how, weights = "peft save_pretrained", out / "adapter_model.safetensors"
        else:
            how, weights = _save_peftkit(model, out)
        return {
            "weights_bytes": weights.stat().st_size,
            "dir_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
            "how": how,
        }


def int8_linear_bytes(model: nn.Module) -> dict[str, Any]:
    """Bytes of the quantised linear layers of an 8-bit model vs the same layers in fp32.

    int8 side: the int8 weight, its per-row fp32 scales (``SCB``) and the bias as stored;
    fp32 side: ``out x in`` fp32 weights and fp32 biases.
    """
    try:
        from bitsandbytes.nn import Linear8bitLt
    except ImportError:
        return {"layers": 0}
    int8_bytes = fp32_bytes = layers = 0
    for module in model.modules():
        if not isinstance(module, Linear8bitLt):
            continue
        layers += 1
        weight = module.weight
        scales = getattr(weight, "SCB", None)
        if scales is None:
            scales = getattr(getattr(module, "state", None), "SCB", None)
        bias = module.bias
        int8_bytes += weight.numel() * weight.element_size()
        int8_bytes += scales.numel() * scales.element_size() if scales is not None else 0
        int8_bytes += bias.numel() * bias.element_size() if bias is not None else 0
        fp32_bytes += module.in_features * module.out_features * 4 + (
            module.out_features * 4 if bias is not None else 0
        )
    ratio = int8_bytes / fp32_bytes if fp32_bytes else None
    return {"layers": layers, "int8_bytes": int8_bytes, "fp32_bytes": fp32_bytes, "ratio": ratio}


def parameter_bytes(model: nn.Module) -> int:
    """In-memory bytes of all parameters and buffers (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    scales = [getattr(p, "SCB", None) for p in model.parameters()]
    total += sum(s.numel() * s.element_size() for s in scales if isinstance(s, torch.Tensor))
    return total


def _save_peftkit(model: nn.Module, out: Path) -> tuple[str, Path]:
    try:
        from peftkit.io import save_adapter
    except ImportError:
        save_adapter = None
    if save_adapter is not None:
        directory = Path(save_adapter(model, out))
        return "peftkit.save_adapter", directory / "adapter_model.safetensors"
    from safetensors.torch import save_file

    from peftkit import adapter_state_dict
    from peftkit.state import require_state

    logger.info("peftkit.io not available: saving the adapter's tensors with safetensors")
    out.mkdir(parents=True)
    tensors = adapter_state_dict(model, require_state(model).active)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return "safetensors of the adapter state dict", out / "adapter_model.safetensors"
