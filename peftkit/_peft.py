"""Type checks against peft's adapter-layer classes without importing peft (which takes seconds).

A module can only be an instance of a peft class once peft's module defining it has been imported,
so each check first looks the module up in ``sys.modules`` and answers ``False`` without it. This
keeps ``peftkit methods`` and ``peftkit inspect``, which never meet a live adapter layer, from
importing peft at all.
"""

from __future__ import annotations

import sys
from typing import Any

_TUNERS_MODULE = "peft.tuners.tuners_utils"
_WRAPPERS_MODULE = "peft.utils.other"


def _peft_class(module_name: str, class_name: str) -> type | None:
    module = sys.modules.get(module_name)
    return getattr(module, class_name, None) if module is not None else None


def is_tuner_layer(module: Any) -> bool:
    """Whether ``module`` is a peft ``BaseTunerLayer`` (LoRA, AdaLoRA, bottleneck, plugin layers)."""
    cls = _peft_class(_TUNERS_MODULE, "BaseTunerLayer")
    return cls is not None and isinstance(module, cls)


def is_training_wrapper(module: Any) -> bool:
    """Whether ``module`` is a peft ``AuxiliaryTrainingWrapper`` (e.g. a trainable head copy)."""
    cls = _peft_class(_WRAPPERS_MODULE, "AuxiliaryTrainingWrapper")
    return cls is not None and isinstance(module, cls)


def is_modules_to_save(module: Any) -> bool:
    """Whether ``module`` is a peft ``ModulesToSaveWrapper`` (per-adapter copies of a head)."""
    cls = _peft_class(_WRAPPERS_MODULE, "ModulesToSaveWrapper")
    return cls is not None and isinstance(module, cls)


def is_conv1d(module: Any) -> bool:
    """Whether ``module``, or the layer it wraps if it is a peft adapter layer, is a GPT-2 ``Conv1D``.

    ``Conv1D`` stores its weight transposed (``in x out``), which peft's LoRA layers must be told
    with ``fan_in_fan_out=True``.
    """
    base = module.get_base_layer() if is_tuner_layer(module) else module
    return type(base).__name__ == "Conv1D"


def uses_conv1d(model: Any, patterns: list[str] | str) -> bool:
    """Whether modules matched by target ``patterns`` are GPT-2 ``Conv1D`` layers (peft's ``fan_in_fan_out``).

    Looks through adapter layers already injected (``get_base_layer``), so a second adapter on a
    GPT-2 model gets the same ``fan_in_fan_out`` as the first.
    """
    from peftkit.targets import matches

    return any(
        is_conv1d(module)
        for name, module in model.named_modules()
        if ".base_layer" not in name and matches(name, patterns)
    )


def targets_conv1d(model: Any, names: list[str]) -> bool:
    """Whether the adapted modules (full names, as recorded after injection) wrap ``Conv1D`` layers."""
    return any(is_conv1d(model.get_submodule(name)) for name in names)
