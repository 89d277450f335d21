"""Load a base model for a task, optionally with 8-bit or 4-bit (bitsandbytes) linear layers.

With ``load_in_8bit=True`` the backbone's ``nn.Linear`` / GPT-2 ``Conv1D`` layers become
``bnb.nn.Linear8bitLt``; with ``load_in_4bit=True`` they become NF4 ``bnb.nn.Linear4bit`` (QLoRA's
format). Everything outside the backbone (task heads such as ``classifier``, ``score``,
``qa_outputs``, and ``lm_head``) is found before any weight is read, by building the architecture
on the meta device, and kept unquantised through ``llm_int8_skip_modules``. Layer norms and
embeddings are never quantised. The result is frozen except for its task heads, ready for
:func:`peftkit.wrap`.

Precision of what is not quantised (``dtype``, the *compute dtype*)::

    load_in_8bit=True                      embeddings, norms, LM head, activations: float32 (as before)
    load_in_8bit=True, dtype=bfloat16      all of those in bfloat16: the memory-saving setting
    load_in_4bit=True                      bfloat16 (QLoRA's default compute dtype); dtype= overrides
    trainable task heads                   float32 always (a small copy; its inputs are cast up)

One log line says which kernels the quantised layers run: the fast int8 CPU path (8-bit, CPU,
float32 compute), bitsandbytes' CPU path, or bitsandbytes' CUDA kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from peftkit import models
from peftkit.errors import QuantizationError, did_you_mean
from peftkit.model_path import check_model_path
from peftkit.models import TASKS, head_module_names, outside_backbone
from peftkit.quantization.fast_int8 import describe_int8_paths, enable_fast_int8, import_bitsandbytes
from peftkit.quantization.lean_int8 import enable_lean_training
from peftkit.quantization.prepare import enable_gradient_checkpointing, prepare_for_kbit_training
from peftkit.quantization.streaming import pread_checkpoints

logger = logging.getLogger(__name__)

#: ``from_pretrained`` keyword arguments that also matter for reading the config.
_CONFIG_KWARGS = (
    "revision",
    "trust_remote_code",
    "cache_dir",
    "local_files_only",
    "token",
    "subfolder",
    "gguf_file",
)


def auto_class(task: str) -> type:
    """The transformers auto class of ``task``.

    Raises:
        QuantizationError: If ``task`` is not one of :data:`TASKS` (lists them).

    """
    if task not in TASKS:
        raise QuantizationError(
            f"Unsupported task {task!r}.{did_you_mean(str(task), TASKS)} Valid tasks: {', '.join(TASKS)}."
        )
    import transformers

    return getattr(transformers, TASKS[task].auto_class)


def skip_modules(path: str, task: str, **from_pretrained_kwargs: Any) -> list[str]:
    """Module names to keep unquantised when loading ``path`` for ``task`` in 8 or 4 bits.

    Builds the architecture on the meta device (no weights read, no memory used) and returns the
    modules outside the backbone plus transformers' own defaults (tied / output embeddings).
    """
    import transformers
    from transformers.quantizers.base import get_keys_to_not_convert

    config = from_pretrained_kwargs.get("config")
    if config is None or isinstance(config, str):
        config_kwargs = {k: from_pretrained_kwargs[k] for k in _CONFIG_KWARGS if k in from_pretrained_kwargs}
        if from_pretrained_kwargs.get("num_labels") is not None:
            config_kwargs["num_labels"] = from_pretrained_kwargs["num_labels"]
        config = transformers.AutoConfig.from_pretrained(config or path, **config_kwargs)
    with torch.device("meta"):
        skeleton = auto_class(task).from_config(config)
    names = set(outside_backbone(skeleton))
    try:
        defaults = get_keys_to_not_convert(skeleton)
    except Exception as exc:  # transformers internals: informative only
        logger.debug("get_keys_to_not_convert failed (%s); using the heads only", exc)
        defaults = []
    modules = dict(skeleton.named_modules())
    names.update(name for name in defaults if name in modules)  # drops parameter keys like "x.bias"
    return sorted(names)


#: Precision names accepted for ``dtype`` besides ``torch.dtype`` objects.
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _default_device_map(device_map: Any) -> Any:
    if device_map is not None:
        return device_map
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"


def _pop_dtype(kwargs: dict[str, Any], path: str) -> torch.dtype | None:
    """Remove ``dtype`` (or the older ``torch_dtype``) from ``kwargs`` and return it as a ``torch.dtype``."""
    value = kwargs.pop("dtype", None)
    older = kwargs.pop("torch_dtype", None)
    value = value if value is not None else older
    if value is None or isinstance(value, torch.dtype):
        return value
    if value == "auto":
        import transformers

        config_kwargs = {k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
        stored = getattr(transformers.AutoConfig.from_pretrained(path, **config_kwargs), "dtype", None)
        value = stored if stored is not None else "float32"
        if isinstance(value, torch.dtype):
            return value
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise QuantizationError(
            f"dtype={value!r} is not a compute dtype for a quantised base: use one of "
            f"{', '.join(_DTYPES)} (bfloat16 saves the most memory)."
        )
    return _DTYPES[name]


def _quantization_config(bits: int, skipped: list[str], compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skipped)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,  # QLoRA's setting: the block scales quantised too (~0.4 bit/weight less)
        llm_int8_skip_modules=skipped,
    )


def _quantized_class(bits: int) -> type:
    bnb = import_bitsandbytes()
    return bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit


def _check_converted(model: nn.Module, bits: int, skipped: list[str]) -> list[nn.Module]:
    """The quantised layers; raise if there is none, warn about backbone layers bitsandbytes left alone."""
    quantized = _quantized_class(bits)
    converted = [m for m in model.modules() if isinstance(m, quantized)]
    backbone = models.backbone(model) or model
    # the architecture's own choice (T5 keeps its feed-forward output "wo" in fp32 for stability)
    kept_by_design = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    prefix = next((name + "." for name, m in model.named_modules() if m is backbone and name), "")
    left = sorted(
        {
            type(m).__name__
            for name, m in backbone.named_modules()
            if not any(
                f"{prefix}{name}" == kept or f"{prefix}{name}".startswith(kept + ".") for kept in skipped
            )
            and not kept_by_design & set(name.split("."))
            and not isinstance(m, (quantized, nn.Embedding))
            and (weight := m._parameters.get("weight")) is not None
            and weight.dim() >= 2  # matrices and convolution kernels
            and weight.is_floating_point()
        }
    )
    if not converted:
        raise QuantizationError(
            f"No layer of {type(model).__name__} could be made {bits}-bit: bitsandbytes converts only "
            f"torch.nn.Linear and transformers' Conv1D layers, and this backbone's matrix layers are "
            f"{', '.join(left) or 'none'}. Load it without load_in_{bits}bit."
        )
    if left:
        logger.warning(
            "These backbone layer types are not supported by bitsandbytes %d-bit and stay unquantised: %s",
            bits,
            ", ".join(left),
        )
    return converted


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


def _log_kernel_path(
    model: nn.Module, bits: int, layers: int, compute_dtype: torch.dtype, skipped: list[str]
) -> None:
    """The one line saying which kernels the quantised layers run."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        path = "bitsandbytes CUDA kernels"
    elif bits == 8 and describe_int8_paths(model)["idle"]:
        from peftkit.quantization.int8_kernels import activation_code_max

        code_max = activation_code_max()
        path = (
            f"the fast int8 CPU path (oneDNN, {8 if code_max == 255 else 7}-bit per-token activations)"
            if code_max is not None
            else "bitsandbytes CPU path (oneDNN int8 kernels unavailable here)"
        )
    else:
        what = "int8" if bits == 8 else "NF4"
        path = f"bitsandbytes CPU path ({what} weights dequantised for each matmul)"
    kind = "8-bit" if bits == 8 else "4-bit NF4"
    logger.info(
        "%s base on %s: %d linear layers run %s; compute dtype %s; kept unquantised: %s",
        kind,
        device,
        layers,
        path,
        str(compute_dtype).removeprefix("torch."),
        ", ".join(skipped) or "none",
    )


def load_base(
    path: str,
    task: str = "token-classification",
    num_labels: int | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    device_map: Any = None,
    gradient_checkpointing: bool = False,
    fast_int8: bool | None = None,
    keep_unquantized: Sequence[str] = (),
    **from_pretrained_kwargs: Any,
) -> Any:
    """Load the base model for ``task`` from ``path``: full precision, 8-bit or 4-bit (NF4) linear layers.

    Args:
        path: A local directory (or hub id) with a transformers checkpoint.
        task: One of ``"token-classification"``, ``"sequence-classification"``, ``"causal-lm"``,
            ``"question-answering"``.
        num_labels: Number of labels of a classification head (new heads are initialised randomly).
        load_in_8bit: Quantise the backbone's linear layers to int8 (LLM.int8()) with bitsandbytes.
        load_in_4bit: Quantise them to 4-bit NF4 with double-quantised scales (QLoRA) instead.
            Either way task heads, the LM head, layer norms and embeddings stay unquantised; the
            model is frozen except for its task heads (kept in float32) and ready for :func:`peftkit.wrap`.
        device_map: Passed to ``from_pretrained``. For quantised bases it defaults to CUDA device 0
            when available, else ``"cpu"``.
        gradient_checkpointing: Enable non-reentrant gradient checkpointing.
        fast_int8: Enable the fast int8 CPU path for the 8-bit layers (:func:`enable_fast_int8`).
            ``None`` (default) enables it for an 8-bit model on CPU with a float32 compute dtype; with
            bfloat16/float16 it stays off, because its packed weight copy doubles the memory of the
            8-bit weights. Ignored without ``load_in_8bit``.
        keep_unquantized: More modules to keep unquantised and in float32, like the task heads: those
            you will train in full (``head_modules=[...]`` of :func:`peftkit.wrap`, e.g. BERT's
            ``bert.pooler``). Ignored without quantisation.
        **from_pretrained_kwargs: Passed to ``from_pretrained`` (``revision``, ...). ``dtype`` is the
            precision of everything not quantised and of the activations (the *compute dtype*):
            ``torch.bfloat16`` saves the most memory. Without it, 8-bit bases keep float32 and 4-bit
            bases use bfloat16.

    Returns:
        The ``transformers.PreTrainedModel``.

    Raises:
        ModelPathError: ``path`` does not exist, is a file, an adapter directory or holds no config.json.
        QuantizationError: For an unknown task, both ``load_in_8bit`` and ``load_in_4bit``, quantisation
            without an importable bitsandbytes, a ``quantization_config`` together with either, an
            unknown compute dtype, or a model none of whose layers bitsandbytes can convert.

    Example:
        >>> model = load_base(path, task="causal-lm", load_in_8bit=True, dtype=torch.bfloat16)  # doctest: +SKIP
        >>> model.lm_head.weight.dtype, model.model.layers[0].mlp.up_proj.weight.dtype  # doctest: +SKIP
        (torch.bfloat16, torch.int8)

    """
    check_model_path(
        path,
        gguf_file=from_pretrained_kwargs.get("gguf_file"),
        subfolder=from_pretrained_kwargs.get("subfolder"),
        needs_config=from_pretrained_kwargs.get("config") is None,
    )
    cls = auto_class(task)
    kwargs = dict(from_pretrained_kwargs)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if not (load_in_8bit or load_in_4bit):
        model = cls.from_pretrained(path, device_map=device_map, **kwargs)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model
    if load_in_8bit and load_in_4bit:
        raise QuantizationError("Pass load_in_8bit=True or load_in_4bit=True, not both.")
    bits = 8 if load_in_8bit else 4
    import_bitsandbytes()
    if kwargs.get("quantization_config") is not None:
        raise QuantizationError(
            f"load_in_{bits}bit=True builds its own BitsAndBytesConfig (keeping heads unquantised); "
            f"drop quantization_config, or pass it without load_in_{bits}bit to use it as it is."
        )
    compute_dtype = _pop_dtype(kwargs, path) or (torch.float32 if bits == 8 else torch.bfloat16)
    skipped = sorted({*skip_modules(path, task, **kwargs), *keep_unquantized})
    kwargs["quantization_config"] = _quantization_config(bits, skipped, compute_dtype)
    with pread_checkpoints():  # the checkpoint is read once: never let its mapped pages count as memory
        model = cls.from_pretrained(
            path, device_map=_default_device_map(device_map), dtype=compute_dtype, **kwargs
        )
    layers = _check_converted(model, bits, skipped)
    heads = list(dict.fromkeys([*head_module_names(model), *keep_unquantized]))
    modules = dict(model.named_modules())
    unknown = [name for name in heads if name not in modules]
    if unknown:
        raise QuantizationError(
            f"keep_unquantized names no module of this model: {', '.join(unknown)}; top-level modules: "
            f"{', '.join(name for name, _ in model.named_children())}."
        )
    prepare_for_kbit_training(model, heads, gradient_checkpointing)
    on_cpu = _on_cpu(model)
    if bits == 4 and on_cpu:
        _keep_4bit_weights_trainable_after_eval(layers)
    if on_cpu:
        _return_freed_memory()
    if bits == 8:
        enable_lean_training(model)  # bitsandbytes would keep every 8-bit layer's input alive in training
        if fast_int8 is None:
            fast_int8 = on_cpu and compute_dtype == torch.float32
        if fast_int8:
            enable_fast_int8(model)
    from peftkit.notices import quiet_repeated_bnb_casts

    quiet_repeated_bnb_casts()
    _log_kernel_path(model, bits, len(layers), compute_dtype, skipped)
    return model


def _keep_4bit_weights_trainable_after_eval(layers: list[nn.Module]) -> None:
    """Turn off bitsandbytes' repacking of 4-bit weights at the first CPU inference forward.

    On CPUs with AVX-512 BF16, ``Linear4bit`` rewrites its weight into a packed inference layout at
    the first forward in eval mode, and training forwards after that fail ("a view of a leaf Variable
    that requires grad is being used in an in-place operation"): evaluating between training steps
    would break the run. The unpacked layout serves both.
    """
    for layer in layers:
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False


def _return_freed_memory() -> None:
    """Hand the heap memory freed while quantising back to the OS (glibc's ``malloc_trim``).

    Each weight passes through full-precision buffers while it is quantised; glibc keeps most of
    what they freed (0.65 GB after an 8-bit load of a 1.1B model on CPU) for later allocations that
    rarely fit it. A no-op where glibc is not the allocator.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)
