"""``peftkit.wrap``: freeze a backbone and inject an adapter method in place.

Data flow::

    model --freeze all--> pick targets (defaults per model_type) --builder--> adapter layers
          --heads--> ModulesToSaveWrapper (trainable fp32 copy per adapter) --> same model object

The returned object is the very model that was passed in: same class, same ``forward``
signature, same outputs type, so it works in a plain Accelerate loop and in
``transformers.Trainer``. Only its ``save_pretrained`` differs: it writes the adapter, and
``Trainer`` checkpoints resume exactly (:mod:`peftkit.pretrained`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn

from peftkit import pretrained
from peftkit import targets as target_defaults
from peftkit.errors import AlreadyWrappedError, InvalidOptionError, NotWrappedError, PeftkitError
from peftkit.methods.base import MethodConfig
from peftkit.models import head_module_names
from peftkit.quantization.prepare import train_in_full_precision
from peftkit.registry import DEFAULT_METHOD, MethodSpec, get_method
from peftkit.rollback import ModelSnapshot
from peftkit.state import (
    AdapterRecord,
    adapter_layers,
    adapter_parameters,
    ensure_state,
    get_state,
    require_state,
    unwrap_model,
)

logger = logging.getLogger(__name__)


def wrap(
    model: nn.Module, method: str = DEFAULT_METHOD, *, adapter_name: str = "default", **options: Any
) -> nn.Module:
    """Freeze ``model`` and inject an adapter method at the architecture's default targets.

    Args:
        model: A transformers model (BERT-like encoder, GPT-2, Llama-like decoder, ...), fp32 or
            8-bit (see :func:`peftkit.load_base`).
        method: Registered method name (``peftkit.methods()``: ``"lora"``, ``"dora"``, ``"adalora"``,
            ``"ia3"``, ``"adapter"``, ``"parallel"``, ``"prefix"``, or a plugin's).
        adapter_name: Name of the adapter (several can live on one model, see :func:`add_adapter`).
        **options: Method options (e.g. ``r=8`` for LoRA, ``placement="pfeiffer"`` for the adapter,
            ``target_modules=[...]`` and ``head_modules=[...]`` for every method that adapts modules).

    Returns:
        The same model object, with only the adapter and the task head trainable.

    Raises:
        UnknownMethodError: ``method`` is not registered (lists the known ones).
        InvalidOptionError: An option is unknown or has an invalid value.
        UnsupportedArchitectureError: No default targets and no ``target_modules``.
        NoTargetsMatchedError: ``target_modules`` match nothing.
        AlreadyWrappedError: The model already carries a peftkit adapter.

    Example:
        >>> model = peftkit.wrap(model, "lora", r=8)  # doctest: +SKIP
        >>> peftkit.summary(model).trainable  # doctest: +SKIP

    """
    _check_is_model(model)
    state = get_state(model)
    if state is not None and state.adapters:
        existing = ", ".join(f"{n!r} ({r.method})" for n, r in state.adapters.items())
        raise AlreadyWrappedError(
            f"This model is already wrapped by peftkit (adapters: {existing}). To add another adapter use "
            f"peftkit.add_adapter(model, {method!r}, adapter_name='other'); to start over, reload the base model."
        )
    if _has_foreign_adapters(model):
        raise AlreadyWrappedError(
            "This model already contains peft adapter layers injected outside peftkit. Start from a plain "
            "base model, or load the adapter with peftkit.load_adapter."
        )
    return add_adapter(model, method, adapter_name=adapter_name, **options)


def add_adapter(model: nn.Module, method: str, *, adapter_name: str, **options: Any) -> nn.Module:
    """Inject one more adapter into a (possibly already wrapped) model and make it active.

    Args:
        model: The model; its backbone stays frozen.
        method: Registered method name.
        adapter_name: A new, unused adapter name.
        **options: Method options, as for :func:`wrap`.

    Returns:
        The same model object.

    Raises:
        AlreadyWrappedError: ``adapter_name`` is already used on this model.

    """
    _check_is_model(model)
    spec = get_method(method)
    config = build_config(spec, options)
    return inject(model, spec, config, adapter_name)


def build_config(spec: MethodSpec, options: dict[str, Any]) -> MethodConfig:
    """Validate ``options`` into the method's config dataclass."""
    return spec.config_cls.from_options(options)


def inject(model: nn.Module, spec: MethodSpec, config: MethodConfig, adapter_name: str) -> nn.Module:
    """Inject an adapter described by an already-built config (used by ``wrap`` and ``load_adapter``)."""
    _check_adapter_name(adapter_name)
    inner = unwrap_model(model)
    state = ensure_state(inner)
    if adapter_name in state.adapters:
        raise AlreadyWrappedError(
            f"Adapter name {adapter_name!r} is already used on this model (method "
            f"{state.adapters[adapter_name].method}); pass another adapter_name."
        )
    heads = list(config.head_modules) if config.head_modules is not None else _detect_heads(inner)
    patterns: list[str] | str | None = None
    resolved: list[str] = []
    if spec.uses_targets:
        patterns = (
            config.target_modules
            if config.target_modules is not None
            else _default_targets(inner, spec, config)
        )
        resolved = target_defaults.resolve_targets(inner, patterns, exclude=heads)
        patterns = _outside_heads(inner, patterns, resolved)
    for head in heads:
        _check_head(inner, head)
    snapshot = ModelSnapshot(inner)
    try:
        if not state.adapters:  # first adapter: freeze the whole backbone
            for param in inner.parameters():
                param.requires_grad_(False)
        handle = spec.builder(inner, config, adapter_name, patterns)
        _wrap_heads(inner, heads, adapter_name)
        _settle_adapter_parameters(inner, adapter_name)
    except (ValueError, TypeError, NotImplementedError) as exc:
        snapshot.restore()
        if isinstance(exc, PeftkitError):
            raise
        if patterns is None:
            raise InvalidOptionError(
                f"Method {spec.name!r} cannot be added to this {type(inner).__name__}: {_first_line(exc)}. "
                "The model was left unchanged."
            ) from exc
        raise _cannot_adapt(inner, spec.name, patterns, resolved, exc) from exc
    except BaseException:
        snapshot.restore()  # a failed injection leaves the model exactly as it was
        raise
    inner.train(inner.training)  # new modules default to training mode: align them with the model
    inner.__dict__.pop("peft_config", None)  # peft tuners leave this behind; transformers reads it
    state.adapters[adapter_name] = AdapterRecord(
        name=adapter_name,
        method=spec.name,
        config=config,
        targets=resolved,
        heads=heads,
        handle=handle,
        metadata={"source": spec.source},
    )
    set_active(inner, adapter_name)
    pretrained.install(inner)  # Trainer's save_model / checkpoints write the adapter; resume restores it
    logger.info(
        "Injected %s adapter %r into %d modules; heads: %s", spec.name, adapter_name, len(resolved), heads
    )
    return model


def set_active(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the adapter used in forward passes, and the trainable one.

    An adapter loaded with ``load_adapter(..., is_trainable=False)`` stays frozen.

    Raises:
        NotWrappedError: The model has no adapters, or none of that name (lists the known ones).

    """
    state = require_state(model)
    if adapter_name not in state.adapters:
        raise NotWrappedError(
            f"No adapter named {adapter_name!r} on this model; adapters: {', '.join(state.adapters)}."
        )
    for _, module in adapter_layers(model):
        if isinstance(module, ModulesToSaveWrapper) and adapter_name not in module.modules_to_save:
            module.enable_adapters(False)  # this adapter has no copy of that head: use the original
            continue
        module.set_adapter(adapter_name)  # peft also makes this adapter's weights trainable ...
        module.enable_adapters(True)
    if not state.adapters[adapter_name].trainable:  # ... unless it was loaded for inference
        for param in adapter_parameters(model, adapter_name).values():
            param.requires_grad_(False)
    state.active = adapter_name
    state.enabled = True


def active_adapter(model: nn.Module) -> str | None:
    """Name of the active adapter, or ``None`` if adapters are disabled or absent."""
    state = get_state(model)
    return state.active if state is not None and state.enabled else None


def disable_adapters(model: nn.Module) -> None:
    """Turn every adapter off: forward passes give the base model's outputs (original heads)."""
    state = require_state(model)
    for _, module in adapter_layers(model):
        module.enable_adapters(False)
    state.enabled = False


def enable_adapters(model: nn.Module) -> None:
    """Turn adapters back on after :func:`disable_adapters`, re-activating the active adapter."""
    state = require_state(model)
    if state.active is not None:
        set_active(model, state.active)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager running the base model (adapters off), then restoring the previous state."""
    state = require_state(model)
    was_enabled = state.enabled
    disable_adapters(model)
    try:
        yield model
    finally:
        if was_enabled:
            enable_adapters(model)


def on_optimizer_step(model: nn.Module, global_step: int) -> None:
    """Run per-step method hooks; call after every optimizer step (before ``zero_grad``).

    AdaLoRA's rank-budget schedule runs here, so a training loop that calls this needs no
    method-specific code. A no-op for models without peftkit adapters.

    Args:
        model: The model (DDP / compiled wrappers are stripped).
        global_step: Number of optimizer steps taken so far (1 after the first step).

    """
    state = get_state(model)
    if state is None or state.active is None or not state.enabled:
        return
    record = state.adapters[state.active]
    hook = getattr(record.handle, "on_optimizer_step", None)
    if hook is not None:
        hook(global_step)


def _check_is_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        shown = repr(model) if len(repr(model)) <= 60 else repr(model)[:57] + "..."
        raise InvalidOptionError(
            f"peftkit needs a loaded model object, got {type(model).__name__} {shown}. Load it first, e.g. "
            "AutoModelForTokenClassification.from_pretrained(path, num_labels=9) or "
            "peftkit.load_base(path, task='token-classification', num_labels=9)."
        )


def _check_adapter_name(adapter_name: str) -> None:
    if (
        not isinstance(adapter_name, str)
        or not adapter_name
        or "." in adapter_name
        or not adapter_name.isidentifier()
    ):
        raise InvalidOptionError(
            f"adapter_name={adapter_name!r} is invalid: use a Python identifier without dots, e.g. 'ner'."
        )


def _default_targets(model: nn.Module, spec: MethodSpec, config: MethodConfig) -> list[str] | str:
    if spec.default_targets is not None:
        return spec.default_targets(model, config)
    return target_defaults.default_targets(model, "attention")


def _outside_heads(model: nn.Module, patterns: list[str] | str, resolved: list[str]) -> list[str] | str:
    """``patterns``, or the exact module names ``resolved`` where the patterns also reach into a task head.

    A head is trained in full (a copy per adapter), so a target inside it would add adapter weights
    to a module that is already trainable, and those of its unused original would never get a
    gradient (AdaLoRA's budget step fails on them). E.g. ``dense`` matches BERT's ``bert.pooler.dense``
    when the pooler is a head. The exact names are what peft then gets (and records in its file).
    """
    everything = target_defaults.resolve_targets(model, patterns)
    return patterns if set(everything) == set(resolved) else list(resolved)


def _detect_heads(model: nn.Module) -> list[str]:
    return head_module_names(model)


def _wrap_heads(model: nn.Module, heads: list[str], adapter_name: str) -> None:
    for head in heads:
        module = model.get_submodule(head)
        if isinstance(module, ModulesToSaveWrapper):
            module.update(adapter_name)
        else:
            parent_name, _, child_name = head.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            module = ModulesToSaveWrapper(module, adapter_name)
            setattr(parent, child_name, module)
        train_in_full_precision(module.modules_to_save[adapter_name])


def _settle_adapter_parameters(model: nn.Module, adapter_name: str) -> None:
    """Trainable adapter weights in fp32, and a tuner layer's bookkeeping parameters never trainable.

    On a half-precision base (bf16, or the bf16 compute dtype of a 4-bit base) peft's layers create
    adapter weights in the base layer's dtype, where AdamW's small updates round away: they become fp32,
    as peft's ``autocast_adapter_dtype`` does (peft's forwards cast the input to the adapter's dtype and
    the result back). Moving a layer to another dtype also turns parameters listed in a layer's
    ``other_param_names`` (AdaLoRA's ``ranknum``, the rank that divides its scaling) into trainable
    ones: an optimiser would then change the scaling, which is never saved, so a reloaded adapter would
    differ from the trained one. They are frozen again.
    """
    for param in adapter_parameters(model, adapter_name).values():
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    for _, module in adapter_layers(model):
        for attr in getattr(module, "other_param_names", ()):
            container = getattr(module, attr, None)
            if isinstance(container, nn.ParameterDict) and adapter_name in container:
                container[adapter_name].requires_grad_(False)


def _check_head(model: nn.Module, name: str) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise InvalidOptionError(
            f"head_modules entry {name!r} is not a module of this model; top-level modules: "
            f"{', '.join(n for n, _ in model.named_children())}."
        ) from None
    if isinstance(module, ModulesToSaveWrapper):
        return
    for param_name, param in module.named_parameters():
        if not torch.is_floating_point(param):
            raise InvalidOptionError(
                f"Task head {name!r} has a quantised parameter {param_name!r} ({param.dtype}) and cannot be trained. "
                "Load the base with peftkit.load_base(..., load_in_8bit=True), which keeps heads in full precision, "
                f"or pass llm_int8_skip_modules=[{name!r}] to BitsAndBytesConfig."
            )


def _cannot_adapt(
    model: nn.Module, method: str, patterns: list[str] | str, resolved: list[str], exc: Exception
) -> InvalidOptionError:
    """The error for targets the method's builder refused (typically modules that are not linear)."""
    odd = [
        f"{name} ({type(model.get_submodule(name)).__name__})"
        for name in resolved
        if not target_defaults.is_linear_like(model.get_submodule(name))
    ]
    if odd:
        more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
        reason = f"they include modules that are not linear layers: {', '.join(odd[:3])}{more}"
    else:
        reason = _first_line(exc)
    return InvalidOptionError(
        f"Method {method!r} cannot adapt the modules selected by target_modules={patterns!r}: {reason}. "
        f"Select linear layers instead; this model has: "
        f"{', '.join(target_defaults.linear_module_names(model)) or 'none'}. The model was left unchanged."
    )


def _first_line(exc: BaseException) -> str:
    reason = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _has_foreign_adapters(model: nn.Module) -> bool:
    return any(
        isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)) for m in unwrap_model(model).modules()
    )
