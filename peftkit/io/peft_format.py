"""peft's on-disk config: ``adapter_config.json`` written and read through each method's interop.

peftkit writes every adapter in peft's layout so that ``peft.PeftModel.from_pretrained(base,
directory)`` loads the methods peft knows (the method's :class:`~peftkit.registry.PeftInterop`
gives its part of the config). Methods peft lacks (the bottleneck adapter, plugins) write their
options as they are, under their own ``peft_type``. In the other direction, options are read back
from ``adapter_config.json`` (a directory written by peft has nothing else), and when a file was
edited after peftkit saved it, what peft would read wins, so that both libraries load a directory
the same way.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch
from torch import nn

from peftkit.models import peft_task_type
from peftkit.registry import MethodSpec
from peftkit.state import AdapterRecord

#: Option names every method has; recorded apart from the method's own options.
COMMON_OPTIONS = ("target_modules", "head_modules")


def build_peft_config(model: nn.Module, record: AdapterRecord, spec: MethodSpec) -> dict[str, Any]:
    """The ``adapter_config.json`` content for one adapter, as peft would write it.

    ``target_modules`` lists the full names of the adapted modules (peft matches a full name
    exactly), ``modules_to_save`` the task heads.
    """
    if spec.interop is not None:
        config = dict(spec.interop.to_peft(model, record))
    else:
        options = {k: v for k, v in record.config.to_dict().items() if k not in COMMON_OPTIONS}
        config = {"peft_type": spec.peft_type, **options}
    config.update(
        base_model_name_or_path=_name_or_path(model),
        task_type=peft_task_type(model),
        inference_mode=True,
        modules_to_save=list(record.heads) or None,
        revision=None,
    )
    if spec.uses_targets:
        config["target_modules"] = sorted(record.targets)
    return _jsonable(config)


def options_from_peft_config(spec: MethodSpec, peft_config: dict[str, Any]) -> dict[str, Any]:
    """The method options that ``adapter_config.json`` records (those a peft loader would read)."""
    if spec.interop is not None:
        return dict(spec.interop.from_peft(dict(peft_config)))
    names = {f.name for f in dataclasses.fields(spec.config_cls)} - set(COMMON_OPTIONS)
    return {name: peft_config[name] for name in names if name in peft_config}


def _name_or_path(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    value = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    return str(value) if value else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj
