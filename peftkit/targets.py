"""Per-architecture defaults: which modules to adapt and which modules are task heads.

Architectures are detected from ``config.model_type``. Target patterns follow peft's
convention: a *list* of names matches modules whose full name equals a name or ends with
``"." + name``; a single *string* is a regular expression matched against full module names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from peftkit.errors import NoTargetsMatchedError, UnsupportedArchitectureError

#: Attention projections adapted by LoRA / AdaLoRA by default.
ATTENTION_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
}

_BERT_SUBLAYERS = {"attention": r".*\.attention\.output\.dense", "ffn": r".*\.layer\.\d+\.output\.dense"}
_LLAMA_SUBLAYERS = {"attention": r".*\.self_attn\.o_proj", "ffn": r".*\.mlp\.down_proj"}

#: Output projections of each sub-layer (attention block, feed-forward block) as regexes; the
#: bottleneck adapter is inserted right after them.
SUBLAYER_OUTPUTS: dict[str, dict[str, str]] = {
    "bert": _BERT_SUBLAYERS,
    "roberta": _BERT_SUBLAYERS,
    "xlm-roberta": _BERT_SUBLAYERS,
    "camembert": _BERT_SUBLAYERS,
    "electra": _BERT_SUBLAYERS,
    "distilbert": {"attention": r".*\.attention\.out_lin", "ffn": r".*\.ffn\.lin2"},
    "gpt2": {"attention": r".*\.attn\.c_proj", "ffn": r".*\.mlp\.c_proj"},
    "llama": _LLAMA_SUBLAYERS,
    "mistral": _LLAMA_SUBLAYERS,
    "qwen2": _LLAMA_SUBLAYERS,
    "gemma": _LLAMA_SUBLAYERS,
}


def model_type(model: nn.Module) -> str:
    """Return ``model.config.model_type`` (``""`` for a model without a transformers config)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", "") or "")


def attention_targets(model: nn.Module) -> list[str]:
    """Default LoRA-style targets of ``model``'s architecture.

    Raises:
        UnsupportedArchitectureError: Listing the linear module names that could be targeted.

    """
    kind = model_type(model)
    if kind in ATTENTION_TARGETS:
        return list(ATTENTION_TARGETS[kind])
    raise _unsupported(model, kind, ATTENTION_TARGETS)


def sublayer_targets(model: nn.Module, sublayers: Iterable[str]) -> str:
    """Regex matching the output projections of the given sub-layers (``"attention"``, ``"ffn"``).

    Raises:
        UnsupportedArchitectureError: If the architecture has no known sub-layer layout.

    """
    kind = model_type(model)
    if kind not in SUBLAYER_OUTPUTS:
        raise _unsupported(model, kind, SUBLAYER_OUTPUTS)
    patterns = [SUBLAYER_OUTPUTS[kind][sublayer] for sublayer in sublayers]
    return patterns[0] if len(patterns) == 1 else "(" + "|".join(patterns) + ")"


def is_linear_like(module: nn.Module) -> bool:
    """True for ``nn.Linear``, transformers' ``Conv1D`` and bitsandbytes' linear layers."""
    if isinstance(module, nn.Linear):  # bnb.nn.Linear8bitLt / Linear4bit subclass nn.Linear
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


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


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the task-head modules: top-level children outside the backbone that hold parameters.

    The backbone is ``getattr(model, model.base_model_prefix)``. Output embeddings (LM heads,
    tied or not) are pretrained and never counted as task heads. A bare backbone has no heads.

    Example:
        >>> from transformers import BertConfig, BertForTokenClassification
        >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
        >>> head_module_names(BertForTokenClassification(cfg))
        ['classifier']

    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    backbone = getattr(model, prefix, None) if prefix else None
    if backbone is None or backbone is model:
        return []
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = []
    for name, child in model.named_children():
        if child is backbone or next(child.parameters(), None) is None:
            continue
        if output_embeddings is not None and any(m is output_embeddings for m in child.modules()):
            continue
        heads.append(name)
    return heads


def _unsupported(model: nn.Module, kind: str, table: dict[str, object]) -> UnsupportedArchitectureError:
    known = ", ".join(sorted(table))
    return UnsupportedArchitectureError(
        f"peftkit has no default targets for model_type={kind or type(model).__name__!r} (known: {known}). "
        f"Pass target_modules=[...]; linear modules in this model: {', '.join(linear_module_names(model))}."
    )
