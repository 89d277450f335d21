"""Bytes on disk: adapter files and the base checkpoint."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

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
