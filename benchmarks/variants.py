"""Build the models being compared: {fp32, int8} bases x {full, LoRA, AdaLoRA, Adapter}, plus peft's LoRA.

Every variant starts from the same checkpoint and the same seed. 8-bit bases come from
:func:`peftkit.quantization.load_base` (heads kept in fp32; on CPU with the fast int8 inference
path, used by training forwards too).
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch
from torch import nn
from transformers import AutoModelForTokenClassification

import peftkit
from benchmarks.settings import LORA_OPTIONS

logger = logging.getLogger(__name__)

#: Total optimizer steps announced to AdaLoRA: far beyond any benchmark run, so the budget
#: schedule (sensitivity EMA + masking every step, peftkit's defaults) runs throughout.
ADALORA_TOTAL_STEP = 100_000
HEAD = "classifier"


def variant_name(precision: str, method: str) -> str:
    """``"fp32-lora"``, ``"int8-adapter"``, ..."""
    return f"{precision}-{method}"


def load_base(
    model_path: str, precision: str, num_labels: int, seed: int, device: str, fast_int8: bool = True
) -> nn.Module:
    """Load the token-classification base in fp32 or 8-bit; the new head is seeded with ``seed``.

    8-bit bases come from :func:`peftkit.quantization.load_base` (heads in fp32, backbone frozen,
    on CPU the fast int8 inference path unless ``fast_int8=False``, which leaves bitsandbytes'
    own eval path).
    """
    torch.manual_seed(seed)
    with _quiet():
        if precision == "fp32":
            model = AutoModelForTokenClassification.from_pretrained(model_path, num_labels=num_labels)
            return model.to(device)
        if precision == "int8":
            return _load_int8(model_path, num_labels, device, fast_int8)
    raise ValueError(f"Unknown precision {precision!r}: use 'fp32' or 'int8'.")


def build_variant(
    model_path: str,
    precision: str,
    method: str,
    num_labels: int,
    seed: int,
    device: str,
    fast_int8: bool = True,
) -> nn.Module:
    """Load a base and prepare it for ``method`` (``full``, ``lora``, ``adalora``, ``adapter``, ``peft-lora``, ``base``).

    ``full`` trains every parameter; ``base`` is an untouched model (inference only); the
    peftkit methods use :func:`peftkit.wrap` with default options except LoRA's, which match the
    peft reference (:data:`benchmarks.settings.LORA_OPTIONS`).
    """
    model = load_base(model_path, precision, num_labels, seed, device, fast_int8)
    torch.manual_seed(seed + 1)
    if method in ("full", "base"):
        if method == "full" and precision != "fp32":
            raise ValueError("int8 weights cannot be fine-tuned in full: use a PEFT method on 8-bit bases.")
        return model
    if method == "lora":
        return peftkit.wrap(model, "lora", **LORA_OPTIONS)
    if method == "adalora":
        return peftkit.wrap(model, "adalora", total_step=ADALORA_TOTAL_STEP)
    if method == "adapter":
        return peftkit.wrap(model, "adapter")
    if method == "peft-lora":
        return build_peft_lora(model)
    raise ValueError(f"Unknown method {method!r}.")


def build_peft_lora(model: nn.Module) -> nn.Module:
    """The reference: the same LoRA built directly with ``peft.get_peft_model``."""
    from peft import LoraConfig, get_peft_model

    options = dict(LORA_OPTIONS)
    config = LoraConfig(
        r=options["r"],
        lora_alpha=options["alpha"],
        lora_dropout=options["dropout"],
        target_modules=list(options["target_modules"]),
        modules_to_save=[HEAD],
    )
    return get_peft_model(model, config)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` (each once)."""
    seen: set[int] = set()
    found = []
    for param in model.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            found.append(param)
    return found


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"trainable": ..., "total": ...}`` (int8 weights count their elements)."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"trainable": trainable, "total": total}


def describe_int8(model: nn.Module) -> dict[str, int]:
    """Layers of an 8-bit model per inference path (``peftkit.quantization.describe_int8_paths``)."""
    from peftkit.quantization import describe_int8_paths

    return dict(describe_int8_paths(model))


def _load_int8(model_path: str, num_labels: int, device: str, fast_int8: bool) -> nn.Module:
    from peftkit.quantization import load_base as peftkit_load_base

    return peftkit_load_base(
        model_path,
        task="token-classification",
        num_labels=num_labels,
        load_in_8bit=True,
        device_map=device,
        fast_int8=fast_int8 and not device.startswith("cuda"),
    )


@contextlib.contextmanager
def _quiet():
    """Silence the load report transformers prints (new head, unused pooler) to stdout."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
