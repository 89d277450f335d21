"""transformers' ``save_pretrained`` / ``load_state_dict`` on a wrapped model (``Trainer`` saves and resumes).

A wrapped model is still a ``PreTrainedModel``, so ``transformers.Trainer`` (``save_model`` and every
checkpoint) calls its ``save_pretrained``. The class's own method would write the whole model with
peft's internal keys (``query.base_layer.weight``, ``query.lora_A.default.weight``), which a plain
``from_pretrained`` loads with those layers re-initialised: a model that loads *wrong*. Every model
that :func:`peftkit.wrap` or :func:`peftkit.load_adapter` touches therefore gets, on the instance::

    model.save_pretrained(dir)
      --> peftkit.save_adapter(model, dir)    adapter_config.json, adapter_model.safetensors, peftkit.json
      --> dir named checkpoint-<N> (a Trainer checkpoint): also model.safetensors = the trainable
          weights under their live names + the methods' training state (AdaLoRA's allocator), no
          config.json, so from_pretrained refuses the directory instead of loading it wrong

    Trainer resume: model.load_state_dict(that file, strict=False)
      --> pre-hook: takes the methods' training state out of the dict
      --> post-hook: restores it; frozen weights, absent from the file on purpose, are not "missing"

A model without adapters (after ``peftkit merge`` folded them) saves as the class does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftkit.state import adapter_parameters, get_state, unwrap_model

logger = logging.getLogger(__name__)

#: The weights file ``Trainer._load_from_checkpoint`` reads (``transformers.utils.SAFE_WEIGHTS_NAME``).
RESUME_FILE = "model.safetensors"
#: Key of the marker tensor saying "only the trainable weights, written by peftkit".
TRAINABLE_ONLY_KEY = "peftkit::trainable_only"
#: Key of the methods' JSON training state (UTF-8 bytes as a uint8 tensor: Trainer drops file metadata).
METHOD_VALUES_KEY = "peftkit::method_state_json"
#: Prefix of the methods' tensor training state.
METHOD_TENSOR_PREFIX = "peftkit::method_state::"
#: ``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR`` followed by the step.
_CHECKPOINT_DIR = re.compile(r"checkpoint-\d+")
_INSTALLED = "_peftkit_pretrained_hooks"


def install(model: nn.Module) -> None:
    """Give ``model`` (the user's, unwrapped) peftkit's ``save_pretrained`` and resume hooks; idempotent."""
    inner = unwrap_model(model)
    if _INSTALLED in inner.__dict__ or not callable(getattr(inner, "save_pretrained", None)):
        return
    hooks = _ResumeHooks()
    if hasattr(inner, "register_load_state_dict_pre_hook"):  # public from torch 2.5
        inner.register_load_state_dict_pre_hook(hooks.before_load)
    else:
        inner._register_load_state_dict_pre_hook(hooks.before_load, with_module=True)
    inner.register_load_state_dict_post_hook(hooks.after_load)
    inner.__dict__[_INSTALLED] = hooks
    inner.save_pretrained = types.MethodType(save_pretrained, inner)


def save_pretrained(
    self: nn.Module,
    save_directory: str | os.PathLike[str],
    is_main_process: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
    **kwargs: Any,
) -> None:
    """``save_pretrained`` of a wrapped model: writes its adapter, never a model that loads wrong.

    Args:
        self: The model.
        save_directory: Output directory (``Trainer``: ``output_dir`` or ``checkpoint-<N>``).
        is_main_process: Only the main process writes (as in transformers).
        state_dict: Ignored for a wrapped model (the adapter is read from the live weights).
        **kwargs: transformers' other options; ignored for a wrapped model.

    """
    state = get_state(self)
    if state is None or not state.adapters:  # e.g. folded by peftkit merge: a plain model again
        type(self).save_pretrained(
            self, save_directory, is_main_process=is_main_process, state_dict=state_dict, **kwargs
        )
        return
    if not is_main_process:
        return
    from peftkit.io import save_adapter

    target = save_adapter(self, save_directory)
    extra = ""
    if _CHECKPOINT_DIR.fullmatch(target.name):
        save_resume_file(self, target / RESUME_FILE)
        extra = f" plus {RESUME_FILE} (trainable weights and method state, for Trainer's resume)"
    first = not self.__dict__.get("_peftkit_saved_once")
    self.__dict__["_peftkit_saved_once"] = True
    logger.log(
        logging.WARNING if first else logging.INFO,
        "save_pretrained(%r) on a model carrying a peftkit adapter wrote the adapter only%s, not a full "
        "model: load it with peftkit.load_adapter(base_model, %r) (or peft's PeftModel.from_pretrained); "
        "for a standalone transformers model run `peftkit merge --base BASE --adapter %s --out DIR`.",
        str(target),
        extra,
        str(target),
        str(target),
    )


def save_resume_file(model: nn.Module, path: Path) -> None:
    """Write the trainable weights (live names) and the methods' training state to ``path``."""
    from safetensors.torch import save_file

    from peftkit.training.method_state import collect_method_state

    tensors = {name: p.detach() for name, p in _resumable_parameters(model).items()}
    method_tensors, values = collect_method_state(model)
    tensors.update({METHOD_TENSOR_PREFIX + k: v for k, v in method_tensors.items()})
    tensors[METHOD_VALUES_KEY] = torch.frombuffer(
        bytearray(json.dumps(values).encode("utf-8")), dtype=torch.uint8
    )
    tensors[TRAINABLE_ONLY_KEY] = torch.ones(1, dtype=torch.uint8, device="cpu")  # a file marker
    save_file({k: v.to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))


def _resumable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter that training can change: all adapters' weights and anything else trainable."""
    state = get_state(model)
    found = {name: p for name, p in unwrap_model(model).named_parameters() if p.requires_grad}
    for adapter in state.adapters if state is not None else ():
        found.update(adapter_parameters(model, adapter))
    return found


class _ResumeHooks:
    """``load_state_dict`` hooks that read what :func:`save_resume_file` wrote (a no-op for other dicts)."""

    def __init__(self) -> None:
        self.pending: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def before_load(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if prefix:
            return
        self.pending = None  # whatever an earlier, failed load left
        if state_dict.pop(TRAINABLE_ONLY_KEY, None) is None:
            return
        raw = state_dict.pop(METHOD_VALUES_KEY, None)
        values = json.loads(bytes(raw.tolist()).decode("utf-8")) if raw is not None else {}
        tensors = {
            key[len(METHOD_TENSOR_PREFIX) :]: state_dict.pop(key)
            for key in [k for k in state_dict if k.startswith(METHOD_TENSOR_PREFIX)]
        }
        self.pending = (tensors, values)

    def after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        if self.pending is None:
            return
        tensors, values = self.pending
        self.pending = None
        resumable = set(_resumable_parameters(module))
        incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if k in resumable]
        from peftkit.training.method_state import restore_method_state

        restore_method_state(module, tensors, values)
        logger.info(
            "Restored the trainable weights and the adapter methods' training state from a checkpoint"
        )
