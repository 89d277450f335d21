"""Load a base model for a task, optionally with 8-bit (bitsandbytes) linear layers.

With ``load_in_8bit=True`` the backbone's ``nn.Linear`` / GPT-2 ``Conv1D`` layers become
``bnb.nn.Linear8bitLt``; everything outside the backbone (task heads such as ``classifier``,
``score``, ``qa_outputs``, and ``lm_head``) is found before any weight is read, by building the
architecture on the meta device, and kept in full precision through ``llm_int8_skip_modules``.
Layer norms and embeddings are never quantised. The result is frozen except for its task heads,
ready for :func:`peftkit.wrap`, and on CPU runs inference and training forwards on the fast int8 path.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from peftkit import models
from peftkit.errors import QuantizationError, did_you_mean
from peftkit.model_path import check_model_path
from peftkit.models import TASKS, head_module_names, outside_backbone
from peftkit.quantization.fast_int8 import enable_fast_int8, import_bitsandbytes
from peftkit.quantization.prepare import enable_gradient_checkpointing, prepare_for_kbit_training

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
    """Module names to keep in full precision when loading ``path`` for ``task`` in 8 bits.

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


def _default_device_map(device_map: Any) -> Any:
    if device_map is not None:
        return device_map
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"


def _check_converted(model: nn.Module, skipped: list[str]) -> None:
    """Raise if no layer became 8-bit; warn about backbone layers bitsandbytes could not convert."""
    bnb = import_bitsandbytes()
    converted = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    backbone = models.backbone(model) or model
    # the architecture's own choice (T5 keeps its feed-forward output "wo" in fp32 for stability)
    kept_by_design = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    left = sorted(
        {
            type(m).__name__
            for name, m in backbone.named_modules()
            if not any(name == kept or name.startswith(kept + ".") for kept in skipped)
            and not kept_by_design & set(name.split("."))
            and not isinstance(m, (bnb.nn.Linear8bitLt, nn.Embedding))
            and (weight := m._parameters.get("weight")) is not None
            and weight.dim() >= 2  # matrices and convolution kernels
            and weight.is_floating_point()
        }
    )
    if not converted:
        raise QuantizationError(
            f"No layer of {type(model).__name__} could be made 8-bit: bitsandbytes converts only torch.nn.Linear "
            f"and transformers' Conv1D layers, and this backbone's matrix layers are {', '.join(left) or 'none'}. "
            "Load it without load_in_8bit."
        )
    if left:
        logger.warning(
            "These backbone layer types are not supported by bitsandbytes 8-bit and stay in full precision: %s",
            ", ".join(left),
        )
    logger.info(
        "loaded %d 8-bit linear layers; kept in full precision: %s", len(converted), ", ".join(skipped)
    )


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


def load_base(
    path: str,
    task: str = "token-classification",
    num_labels: int | None = None,
    load_in_8bit: bool = False,
    device_map: Any = None,
    gradient_checkpointing: bool = False,
    fast_int8: bool | None = None,
    **from_pretrained_kwargs: Any,
) -> Any:
    """Load the base model for ``task`` from ``path``, in fp32 or with 8-bit linear layers.

    Args:
        path: A local directory (or hub id) with a transformers checkpoint.
        task: One of ``"token-classification"``, ``"sequence-classification"``, ``"causal-lm"``,
            ``"question-answering"``.
        num_labels: Number of labels of a classification head (new heads are initialised randomly).
        load_in_8bit: Quantise the backbone's linear layers to int8 with bitsandbytes. Task heads,
            the LM head, layer norms and embeddings stay in full precision; the model is frozen
            except for its task heads and ready for :func:`peftkit.wrap`.
        device_map: Passed to ``from_pretrained``. For 8-bit it defaults to CUDA device 0 when
            available, else ``"cpu"``.
        gradient_checkpointing: Enable non-reentrant gradient checkpointing.
        fast_int8: Enable the fast int8 CPU path for inference and training (:func:`enable_fast_int8`). ``None``
            (default) enables it when the 8-bit model is on CPU. Ignored without ``load_in_8bit``.
        **from_pretrained_kwargs: Passed to ``from_pretrained`` (``dtype``, ``revision``, ...).

    Returns:
        The ``transformers.PreTrainedModel``.

    Raises:
        ModelPathError: ``path`` does not exist, is a file, an adapter directory or holds no config.json.
        QuantizationError: For an unknown task, 8-bit without an importable bitsandbytes, a
            ``quantization_config`` together with ``load_in_8bit``, or a model none of whose
            layers bitsandbytes can convert.

    Example:
        >>> model = load_base(path, task="token-classification", num_labels=9, load_in_8bit=True)  # doctest: +SKIP
        >>> model.classifier.weight.dtype, model.bert.encoder.layer[0].output.dense.weight.dtype  # doctest: +SKIP
        (torch.float32, torch.int8)

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
    if not load_in_8bit:
        model = cls.from_pretrained(path, device_map=device_map, **kwargs)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model

    import_bitsandbytes()
    if kwargs.get("quantization_config") is not None:
        raise QuantizationError(
            "load_in_8bit=True builds its own BitsAndBytesConfig (keeping heads in full precision); "
            "drop quantization_config, or pass it without load_in_8bit to use it as it is."
        )
    from transformers import BitsAndBytesConfig

    skipped = skip_modules(path, task, **kwargs)
    kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skipped)
    model = cls.from_pretrained(path, device_map=_default_device_map(device_map), **kwargs)
    _check_converted(model, skipped)
    prepare_for_kbit_training(model, head_module_names(model), gradient_checkpointing)
    if fast_int8 is None:
        fast_int8 = _on_cpu(model)
    if fast_int8:
        enable_fast_int8(model)
    return model
