"""Target patterns: resolve them against a model, and the architecture's defaults for a role.

Target patterns follow peft's convention: a *list* of names matches modules whose full name equals
a name or ends with ``"." + name``; a single *string* is a regular expression matched against full
module names. Which modules a role means in each architecture lives in :mod:`peftkit.models`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from peftkit import models
from peftkit.errors import NoTargetsMatchedError, UnsupportedArchitectureError
from peftkit.models import head_module_names, model_type

__all__ = [
    "by_role",
    "default_targets",
    "head_module_names",
    "is_linear_like",
    "linear_module_names",
    "matches",
    "model_type",
    "resolve_targets",
]


def default_targets(model: nn.Module, *roles: str) -> list[str] | str:
    """Target patterns of one or more roles (see :data:`peftkit.models.ROLES`) in ``model``'s architecture.

    One role gives its patterns as they are; several are joined into one regular expression.

    Raises:
        UnsupportedArchitectureError: The architecture defines no such role; names the linear
            modules that could be passed as ``target_modules``.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM  # doctest: +SKIP
        >>> default_targets(LlamaForCausalLM(LlamaConfig()), "attention")  # doctest: +SKIP
        ['q_proj', 'v_proj']

    """
    found = [models.targets_for(model, role) for role in roles]
    if any(patterns is None for patterns in found):
        missing = next(role for role, patterns in zip(roles, found, strict=True) if patterns is None)
        raise UnsupportedArchitectureError(
            f"peftkit has no default {missing!r} targets for model_type={model_type(model) or type(model).__name__!r} "
            f"(known: {', '.join(models.known_model_types(missing))}). Pass target_modules=[...]; linear modules "
            f"in this model: {', '.join(linear_module_names(model))}."
        )
    if len(found) == 1:
        return found[0]
    return "(" + "|".join(_as_regex(patterns) for patterns in found) + ")"


def by_role(*roles: str) -> Callable[[nn.Module, Any], list[str] | str]:
    """A method's ``default_targets``: the modules of ``roles`` in the wrapped model's architecture.

    Example:
        >>> default = by_role("attention_output", "ffn_output")  # the bottleneck adapter's Houlsby placement
        >>> callable(default)
        True

    """

    def default(model: nn.Module, config: Any) -> list[str] | str:
        return default_targets(model, *roles)

    default.__name__ = default.__qualname__ = f"by_role{roles!r}"
    default.roles = roles  # type: ignore[attr-defined]  # shown by `peftkit methods`
    return default


def _as_regex(patterns: list[str] | str) -> str:
    if isinstance(patterns, str):
        return patterns
    return r"(.*\.)?(" + "|".join(re.escape(p) for p in patterns) + ")"


def is_linear_like(module: nn.Module) -> bool:
    """True for ``nn.Linear``, transformers' ``Conv1D`` and bitsandbytes' linear layers."""
    if isinstance(module, nn.Linear):  # bnb.nn.Linear8bitLt / Linear4bit subclass nn.Linear
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def linear_width(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear-like module (``None`` for other modules)."""
    if hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.weight.shape[0]), int(module.nf)
    return None


def layer_widths(model: nn.Module, patterns: list[str] | str) -> dict[str, tuple[int, int]]:
    """``name -> (in_features, out_features)`` of the linear-like modules matched by ``patterns``."""
    found = {}
    for name, module in model.named_modules():
        if name and ".base_layer" not in name and matches(name, patterns):
            width = linear_width(module)
            if width is not None:
                found[name] = width
    return found


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct short names (last path component) of the linear-like modules in ``model``."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if is_linear_like(module)}
    )


def matches(name: str, patterns: list[str] | str) -> bool:
    """Whether a full module name matches target patterns (peft's semantics)."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == pattern or name.endswith("." + pattern) for pattern in patterns)


def resolve_targets(model: nn.Module, patterns: list[str] | str, exclude: Iterable[str] = ()) -> list[str]:
    """Return the full names of the modules matched by ``patterns``.

    Args:
        model: The model to search.
        patterns: Target patterns (list of suffixes or one regex).
        exclude: Module-name prefixes never to target (e.g. the task heads).

    Raises:
        NoTargetsMatchedError: If nothing matches; lists candidate module names.

    """
    excluded = tuple(exclude)
    found = [
        name
        for name, _ in model.named_modules()
        if name
        and matches(name, patterns)
        and not any(name == head or name.startswith(head + ".") for head in excluded)
        and ".base_layer" not in name
        and "modules_to_save" not in name
        and "original_module" not in name
    ]
    heads_matched = [head for head in excluded if matches(head, patterns)]
    if not found and heads_matched:
        raise NoTargetsMatchedError(
            f"target_modules={patterns!r} matches only the task head {', '.join(heads_matched)}, which is trained "
            "in full and saved with the adapter (head_modules), never adapted. Target backbone layers instead: "
            f"{', '.join(name for name in linear_module_names(model) if name not in heads_matched) or 'none'}."
        )
    if not found:
        raise NoTargetsMatchedError(
            f"target_modules={patterns!r} matches no module of this {model_type(model) or type(model).__name__} "
            f"model. Linear modules it has: {', '.join(linear_module_names(model)) or 'none'}. "
            "Pass target_modules=[...] with some of these names."
        )
    return found
