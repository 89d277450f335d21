"""PEFT's on-disk layout: ``adapter_config.json`` contents and AdaLoRA's rank-pattern handling.

peftkit writes LoRA and AdaLoRA adapters exactly as peft does, so that
``peft.PeftModel.from_pretrained(base, directory)`` loads them too; the bottleneck adapter and
plugin methods use the same layout with their own ``peft_type``. In the other direction, a
directory written by peft (no ``peftkit.json``) can be loaded by peftkit: the options are read
back from ``adapter_config.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Any

import torch
from torch import nn

from peftkit._peft import is_conv1d
from peftkit.registry import MethodSpec
from peftkit.state import PEFT_KEY_PREFIX, AdapterRecord

#: ``peft_type`` written by the built-in methods -> peftkit method name.
PEFT_TYPE_TO_METHOD = {"LORA": "lora", "ADALORA": "adalora", "BOTTLENECK": "adapter"}

_TASK_SUFFIXES = (
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
)


def infer_task_type(model: nn.Module) -> str | None:
    """The peft ``task_type`` of a transformers model class (``None`` if it has no peft equivalent)."""
    name = type(model).__name__
    if name.endswith("ForConditionalGeneration") and getattr(model.config, "is_encoder_decoder", False):
        return "SEQ_2_SEQ_LM"
    for suffix, task in _TASK_SUFFIXES:
        if name.endswith(suffix):
            return task
    return None


def build_peft_config(model: nn.Module, record: AdapterRecord, spec: MethodSpec) -> dict[str, Any]:
    """The ``adapter_config.json`` content for one adapter, as peft would write it.

    ``target_modules`` lists the full names of the adapted modules (peft matches a full name
    exactly), ``modules_to_save`` the task heads.
    """
    targets = sorted(record.targets)
    common = {
        "base_model_name_or_path": _name_or_path(model),
        "task_type": infer_task_type(model),
        "inference_mode": True,
        "modules_to_save": list(record.heads) or None,
        "target_modules": targets,
        "revision": None,
    }
    if spec.name == "lora":
        from peftkit.methods.lora import to_peft_lora_config

        config = to_peft_lora_config(record.config, targets, model)
    elif spec.name == "adalora":
        config = copy.deepcopy(record.handle.peft_config)
        config.rank_pattern = saved_rank_pattern(config.rank_pattern, record.name)
    else:
        options = {
            k: v for k, v in record.config.to_dict().items() if k not in ("target_modules", "head_modules")
        }
        return _jsonable({"peft_type": spec.peft_type, **options, **common})
    for key, value in common.items():
        setattr(config, key, value)
    config.fan_in_fan_out = targets_conv1d(model, targets)
    return _jsonable(config.to_dict())


def targets_conv1d(model: nn.Module, targets: list[str]) -> bool:
    """Whether the adapted modules wrap GPT-2 style ``Conv1D`` layers (peft's ``fan_in_fan_out``).

    Looks through peft's wrapping (``get_base_layer``), which the module names point at after injection.
    """
    return any(is_conv1d(model.get_submodule(name)) for name in targets)


def options_from_peft_config(peft_config: dict[str, Any], method: str, heads: list[str]) -> dict[str, Any]:
    """Rebuild peftkit options from a peft-written ``adapter_config.json`` (LoRA / AdaLoRA only)."""
    options: dict[str, Any] = {
        "target_modules": peft_config.get("target_modules"),
        "head_modules": heads,
        "alpha": float(peft_config.get("lora_alpha", 8)),
        "dropout": float(peft_config.get("lora_dropout", 0.0)),
    }
    if method == "lora":
        options.update(r=int(peft_config.get("r", 8)), use_rslora=bool(peft_config.get("use_rslora", False)))
    else:
        names = {"total_step": "total_step", "target_r": "target_r", "init_r": "init_r", "tinit": "tinit"}
        names.update(tfinal="tfinal", delta_t="deltaT", beta1="beta1", beta2="beta2")
        names.update(orth_reg_weight="orth_reg_weight")
        options.update({ours: peft_config[theirs] for ours, theirs in names.items() if theirs in peft_config})
    if isinstance(options["target_modules"], (list, tuple, set)):
        options["target_modules"] = sorted(options["target_modules"])
    return options


def saved_rank_pattern(
    rank_pattern: dict[str, Any] | None, adapter_name: str
) -> dict[str, list[bool]] | None:
    """AdaLoRA's rank pattern with the adapter name removed from its keys, as peft saves it.

    Keys become ``<module>.lora_E``; values are lists of booleans (``True`` = rank kept).
    """
    if not rank_pattern:
        return None
    suffix = f".{adapter_name}"
    pattern = {}
    for key, mask in rank_pattern.items():
        if key.endswith(suffix):
            key = key[: -len(suffix)]
        pattern[key] = [bool(v) for v in (mask.view(-1).tolist() if isinstance(mask, torch.Tensor) else mask)]
    return pattern


def truncate_by_rank_pattern(
    tensors: dict[str, torch.Tensor], rank_pattern: dict[str, list[bool]] | None
) -> dict[str, torch.Tensor]:
    """Keep only the ranks AdaLoRA kept: rows of ``lora_A`` / ``lora_E``, columns of ``lora_B``."""
    if not rank_pattern:
        return tensors
    out = dict(tensors)
    for key, mask in rank_pattern.items():
        module = key.rsplit(".", 1)[0]  # strip ".lora_E"
        keep = torch.tensor(mask, dtype=torch.bool, device="cpu")  # file tensors are on the CPU
        for layer in ("lora_A", "lora_E", "lora_B"):
            name = f"{PEFT_KEY_PREFIX}{module}.{layer}"
            if name not in out:
                continue
            tensor = out[name]
            full = tensor.shape[1] if layer == "lora_B" else tensor.shape[0]
            if full == len(mask) and int(keep.sum()) != full:
                out[name] = tensor[:, keep].contiguous() if layer == "lora_B" else tensor[keep].contiguous()
    return out


def resize_by_rank_pattern(handle: Any, rank_pattern: dict[str, list[bool]], adapter_name: str) -> None:
    """Shrink freshly injected AdaLoRA layers to the saved ranks (peft's ``resize_modules_by_rank_pattern``).

    The keys are passed in their full ``<module>.lora_E.<adapter>`` form, which peft parses
    correctly whatever the adapter name.
    """
    tuner = handle.tuner
    full_keys = {f"{key}.{adapter_name}": mask for key, mask in rank_pattern.items()}
    tuner.resize_modules_by_rank_pattern(full_keys, adapter_name)
    handle.peft_config.rank_pattern = full_keys


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
