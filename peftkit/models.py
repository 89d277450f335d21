"""What peftkit knows about transformer architectures, in one torch-free module.

::

    config.model_type ──► Family (bert, distilbert, gpt2, llama, gpt_neox, t5)
                              └─ roles: module names / regexes per role ("attention", "key_value",
                                 "attention_output", "ffn_input", "ffn_output")
    model class name ───► Task (token-classification, ..., seq2seq-lm): auto class, peft task_type
    model object ───────► backbone, task heads, modules outside the backbone (kept full precision)

Methods ask for targets by *role* (LoRA: ``"attention"``; the bottleneck adapter:
``"attention_output"`` / ``"ffn_output"``), so a new architecture is one :class:`Family` entry and a
new method needs no architecture table of its own. Wrap, 8-bit loading, adapter files and merge
all read the same tables. Nothing here imports torch: models are inspected by duck typing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Roles a method can ask targets for (see :func:`targets_for`).
ROLES = ("attention", "key_value", "attention_output", "ffn_input", "ffn_output")


@dataclass(frozen=True)
class Family:
    """One architecture family and where its modules are.

    Attributes:
        name: Family name (``"bert"``).
        model_types: ``config.model_type`` values of the family.
        roles: Role -> target patterns: a list of module-name suffixes, or one regular expression
            matched against full module names (peft's convention, see :func:`peftkit.targets.matches`).
        encoder_decoder: Whether models of the family have an encoder and a decoder (T5).

    """

    name: str
    model_types: tuple[str, ...]
    roles: dict[str, list[str] | str] = field(default_factory=dict)
    encoder_decoder: bool = False


_BERT_ROLES: dict[str, list[str] | str] = {
    "attention": ["query", "value"],
    "key_value": ["key", "value"],
    "attention_output": r".*\.attention\.output\.dense",
    "ffn_input": r".*\.layer\.\d+\.intermediate\.dense",
    "ffn_output": r".*\.layer\.\d+\.output\.dense",
}
_LLAMA_ROLES: dict[str, list[str] | str] = {
    "attention": ["q_proj", "v_proj"],
    "key_value": ["k_proj", "v_proj"],
    "attention_output": r".*\.self_attn\.o_proj",
    "ffn_input": r".*\.mlp\.up_proj",
    "ffn_output": r".*\.mlp\.down_proj",
}

FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert", "roberta", "xlm-roberta", "camembert", "electra"), _BERT_ROLES),
    Family(
        "distilbert",
        ("distilbert",),
        {
            "attention": ["q_lin", "v_lin"],
            "key_value": ["k_lin", "v_lin"],
            "attention_output": r".*\.attention\.out_lin",
            "ffn_input": r".*\.ffn\.lin1",
            "ffn_output": r".*\.ffn\.lin2",
        },
    ),
    Family(
        "gpt2",
        ("gpt2",),
        {
            "attention": ["c_attn"],
            "key_value": ["c_attn"],
            "attention_output": r".*\.attn\.c_proj",
            "ffn_input": r".*\.mlp\.c_fc",
            "ffn_output": r".*\.mlp\.c_proj",
        },
    ),
    Family("llama", ("llama", "mistral", "qwen2", "gemma"), _LLAMA_ROLES),
    Family("gpt_neox", ("gpt_neox",), {"attention": ["query_key_value"], "key_value": ["query_key_value"]}),
    Family(
        "t5",
        ("t5", "mt5"),
        {
            "attention": ["q", "v"],
            "key_value": ["k", "v"],
            "attention_output": r".*\.(SelfAttention|EncDecAttention)\.o",
            "ffn_input": r".*\.DenseReluDense\.(wi|wi_0)",
            "ffn_output": r".*\.DenseReluDense\.wo",
        },
        encoder_decoder=True,
    ),
)
_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


@dataclass(frozen=True)
class Task:
    """A task: which transformers class loads it and how peft names it.

    Attributes:
        name: peftkit's task name (``--task``).
        auto_class: transformers auto class name.
        peft_task_type: peft's ``task_type`` (``None`` if peft has no equivalent).
        class_suffixes: Endings of the model class names of this task.

    """

    name: str
    auto_class: str
    peft_task_type: str | None
    class_suffixes: tuple[str, ...]


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "token-classification",
            "AutoModelForTokenClassification",
            "TOKEN_CLS",
            ("ForTokenClassification",),
        ),
        Task(
            "sequence-classification",
            "AutoModelForSequenceClassification",
            "SEQ_CLS",
            ("ForSequenceClassification",),
        ),
        Task(
            "question-answering", "AutoModelForQuestionAnswering", "QUESTION_ANS", ("ForQuestionAnswering",)
        ),
        Task("causal-lm", "AutoModelForCausalLM", "CAUSAL_LM", ("ForCausalLM", "LMHeadModel")),
        Task("seq2seq-lm", "AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM", ("ForConditionalGeneration",)),
    )
}


def model_type(model: Any) -> str:
    """``model.config.model_type`` (``""`` for a model without a transformers config)."""
    return str(getattr(getattr(model, "config", None), "model_type", "") or "")


def family_of(model: Any) -> Family | None:
    """The :class:`Family` of ``model`` (``None`` for an architecture peftkit has no table for)."""
    return _BY_MODEL_TYPE.get(model_type(model))


def is_encoder_decoder(model: Any) -> bool:
    """Whether ``model`` has an encoder and a decoder (its forward needs ``decoder_input_ids``)."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def targets_for(model: Any, role: str) -> list[str] | str | None:
    """Target patterns of ``role`` in ``model``'s architecture, or ``None`` if the family lacks it.

    Example:
        >>> from types import SimpleNamespace
        >>> targets_for(SimpleNamespace(config=SimpleNamespace(model_type="llama")), "attention")
        ['q_proj', 'v_proj']

    """
    if role not in ROLES:
        raise ValueError(f"Unknown target role {role!r}; roles: {', '.join(ROLES)}.")
    family = family_of(model)
    patterns = family.roles.get(role) if family is not None else None
    return list(patterns) if isinstance(patterns, list) else patterns


def known_model_types(role: str) -> list[str]:
    """Sorted ``model_type`` values whose family defines ``role``."""
    return sorted(t for family in FAMILIES if role in family.roles for t in family.model_types)


def task_of_class(class_name: str | None) -> str | None:
    """The task of a transformers model class name (``"BertForTokenClassification"`` -> token-classification).

    ``...ForConditionalGeneration`` counts as seq2seq only for encoder-decoder classes named so
    (T5, BART); callers holding a model should prefer :func:`task_of_model`.
    """
    if not class_name:
        return None
    return next((t.name for t in TASKS.values() if class_name.endswith(t.class_suffixes)), None)


def task_of_model(model: Any) -> str | None:
    """The task of a model object (``None`` if its class matches no task)."""
    task = task_of_class(type(model).__name__)
    if task == "seq2seq-lm" and not is_encoder_decoder(model):
        return None  # e.g. vision-language "ForConditionalGeneration" decoders
    return task


def task_of_peft_type(task_type: str | None) -> str | None:
    """Peftkit's task name for a peft ``task_type`` (``"TOKEN_CLS"`` -> token-classification)."""
    return next((t.name for t in TASKS.values() if task_type and t.peft_task_type == task_type), None)


def peft_task_type(model: Any) -> str | None:
    """Peft's ``task_type`` for a model object (``None`` if peft has no equivalent)."""
    task = task_of_model(model)
    return TASKS[task].peft_task_type if task is not None else None


def backbone(model: Any) -> Any | None:
    """The backbone (``getattr(model, model.base_model_prefix)``), or ``None`` if ``model`` is its own.

    T5's ``ForConditionalGeneration`` has no ``transformer`` attribute although its prefix says so:
    the model is its own backbone there, with the LM head outside it.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    found = getattr(model, prefix, None) if prefix else None
    return found if found is not None and found is not model else None


def outside_backbone(model: Any) -> list[str]:
    """Top-level children of ``model`` outside its backbone that hold parameters.

    These are kept in full precision by 8-bit / 4-bit loading: task heads and the LM head. For a
    model that is its own backbone (T5 ``ForConditionalGeneration``, a bare ``BertModel``) only the
    children holding the output embeddings are outside it.
    """
    inner = backbone(model)
    if inner is None:
        return _output_embedding_children(model)
    return [
        name
        for name, child in model.named_children()
        if child is not inner and next(child.parameters(), None) is not None
    ]


def head_module_names(model: Any) -> list[str]:
    """Names of the task-head modules: children outside the backbone that hold parameters.

    Output embeddings (LM heads, tied or not) are pretrained and never counted as task heads, and a
    model that is its own backbone has no task head.

    Example:
        >>> from transformers import BertConfig, BertForTokenClassification
        >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
        >>> head_module_names(BertForTokenClassification(cfg))
        ['classifier']

    """
    if backbone(model) is None:
        return []
    lm_heads = set(_output_embedding_children(model))
    return [name for name in outside_backbone(model) if name not in lm_heads]


def _output_embedding_children(model: Any) -> list[str]:
    getter = getattr(model, "get_output_embeddings", None)
    output_embeddings = getter() if callable(getter) else None
    if output_embeddings is None:
        return []
    return [
        name for name, child in model.named_children() if any(m is output_embeddings for m in child.modules())
    ]
