"""Prefix tuning (Li & Liang 2021), implemented in peftkit with peft's file layout.

::

    every attention layer l:   keys   = [P_k(l) ; W_k x]      P: num_virtual_tokens trained vectors
                               values = [P_v(l) ; W_v x]      per layer, for keys and values

The model attends to ``num_virtual_tokens`` trained key/value vectors in every layer before the
real tokens. Nothing in the model is replaced: a :class:`~peftkit.methods.prefix.layer.PrefixLayer`
child module holds the prefixes, and a forward pre-hook hands them to the model as its key/value
cache and widens the attention mask (positions then start after the prefix, as in peft). It is
the method that proves the contract is not "replace target modules": ``uses_targets=False``.

The file is peft's (``peft_type: PREFIX_TUNING``, one ``prompt_embeddings`` tensor, heads keyed
``base_model.<head>``), so peft loads it where peft's own prefix tuning runs (peft 0.21 with
transformers 5 refuses BERT and GPT-2 classifiers, whose forward takes ``cache`` where peft looks
for ``past_key_values``; decoder LMs such as Llama work). Not mergeable; not at identity at step 0
(the prefixes are attended to from the start); prefixes of the same length combine by averaging.
Encoder-only and decoder-only models; not encoder-decoder (T5).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

from torch import nn

from peftkit.errors import InvalidOptionError
from peftkit.methods.base import MethodConfig, check_positive, require
from peftkit.models import backbone, is_encoder_decoder
from peftkit.registry import (
    PEFT_KEY_PREFIX,
    Combining,
    MethodSpec,
    PeftInterop,
    TensorLayout,
    register_method,
)

if TYPE_CHECKING:
    from peftkit.state import AdapterRecord

_LIVE_KEY = f"{PEFT_KEY_PREFIX}peftkit_prefix.prefix_embeddings"
_FILE_KEY = "prompt_embeddings"


@dataclasses.dataclass
class PrefixOptions(MethodConfig):
    """Options of the ``"prefix"`` method.

    Attributes:
        num_virtual_tokens: Number of trained key/value vectors per layer.
        init_std: Standard deviation of their normal initialisation.

    """

    num_virtual_tokens: int = 20
    init_std: float = 0.02

    method_name = "prefix"
    aliases = {"num_tokens": "num_virtual_tokens", "prefix_length": "num_virtual_tokens"}

    def validate(self) -> None:
        """Check the prefix length and init; prefix tuning adapts no target modules."""
        check_positive("num_virtual_tokens", self.num_virtual_tokens, "20")
        require(
            self.num_virtual_tokens <= 4096,
            f"num_virtual_tokens={self.num_virtual_tokens} is too long (<= 4096).",
        )
        check_positive("init_std", self.init_std, "0.02")
        require(
            self.target_modules is None,
            f"target_modules={self.target_modules!r} does not apply to prefix tuning: it adds key/value vectors to "
            "every attention layer and adapts no module. Drop target_modules.",
        )


def attention_shape(model: nn.Module) -> tuple[int, int, int, int]:
    """``(num_layers, kv_heads, head_dim, hidden)`` of ``model``'s attention layers.

    Raises:
        InvalidOptionError: An encoder-decoder model, or a config without the attention sizes.

    """
    config = getattr(model, "config", None)
    if is_encoder_decoder(model):
        raise InvalidOptionError(
            f"Prefix tuning here supports encoder-only and decoder-only models, not the encoder-decoder "
            f"{type(model).__name__}; use lora, ia3 or an adapter method."
        )
    try:
        layers, heads, hidden = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
    except AttributeError as exc:
        raise InvalidOptionError(
            f"Cannot read the attention sizes of {type(model).__name__}'s config ({exc})."
        ) from None
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return int(layers), int(kv_heads), int(head_dim), int(hidden)


class PrefixHandle:
    """Removes the model's pre-hook when the adapter is folded away."""

    def __init__(self, hook: Any) -> None:
        """Keep the hook handle (``None`` when another adapter's hook already serves this one)."""
        self.hook = hook

    def remove(self) -> None:
        """Detach the pre-hook."""
        if self.hook is not None:
            self.hook.remove()


def build_prefix(model: nn.Module, config: PrefixOptions, adapter_name: str, targets: None) -> PrefixHandle:
    """Trained key/value prefixes for every attention layer, fed to the model as its cache."""
    from peftkit.methods.prefix.layer import CACHE_ARGS, PREFIX_MODULE, PrefixLayer, feed_prefix

    shape = attention_shape(model)
    layer = getattr(model, PREFIX_MODULE, None)
    hook = None
    if layer is None:
        accepted = inspect.signature((backbone(model) or model).forward).parameters
        cache_arg = next((name for name in CACHE_ARGS if name in accepted), None)
        if cache_arg is None:
            raise InvalidOptionError(
                f"{type(model).__name__} takes no key/value cache in its forward, which prefix tuning needs."
            )
        layer = PrefixLayer(shape, model.config, cache_arg)
        model.add_module(PREFIX_MODULE, layer)
        hook = model.register_forward_pre_hook(feed_prefix, with_kwargs=True)
    like = model.get_input_embeddings().weight
    layer.update_layer(adapter_name, config.num_virtual_tokens, config.init_std, like)
    return PrefixHandle(hook)


def to_peft(model: nn.Module, record: AdapterRecord) -> dict[str, Any]:
    """``adapter_config.json`` as peft's ``PrefixTuningConfig`` writes it (no projection)."""
    layers, kv_heads, head_dim, hidden = attention_shape(model)
    return {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": record.config.num_virtual_tokens,
        "num_layers": layers,
        "num_attention_heads": kv_heads,
        "token_dim": kv_heads * head_dim,
        "encoder_hidden_size": kv_heads * head_dim,
        "num_transformer_submodules": 1,
        "prefix_projection": False,
    }


def from_peft(peft_config: dict[str, Any]) -> dict[str, Any]:
    """The prefix length peft reads."""
    return {"num_virtual_tokens": peft_config.get("num_virtual_tokens", 20)}


def _to_file(key: str) -> str:
    """Live key -> file key: the prefix is ``prompt_embeddings``, heads ``base_model.<head>...`` (peft's layout)."""
    if key == _LIVE_KEY:
        return _FILE_KEY
    return "base_model." + key[len(PEFT_KEY_PREFIX) :] if key.startswith(PEFT_KEY_PREFIX) else key


def _from_file(key: str) -> str:
    if key == _FILE_KEY:
        return _LIVE_KEY
    return (
        PEFT_KEY_PREFIX + key[len("base_model.") :]
        if key.startswith("base_model.") and not key.startswith(PEFT_KEY_PREFIX)
        else key
    )


SPEC = MethodSpec(
    name="prefix",
    config_cls=PrefixOptions,
    builder=build_prefix,
    mergeable=False,
    peft_type="PREFIX_TUNING",
    source="peftkit",
    description="Trained key/value prefixes in every attention layer (prefix tuning); replaces no module",
    layout=TensorLayout(("prefix_embeddings",), to_file=_to_file, from_file=_from_file),
    interop=PeftInterop(to_peft=to_peft, from_peft=from_peft),
    combining=Combining(must_match=("num_virtual_tokens",)),
    starts_at_identity=False,
    uses_targets=False,
)


def register() -> None:
    """Entry point: register the ``prefix`` method."""
    register_method(SPEC)


__all__ = ["SPEC", "PrefixOptions", "build_prefix", "register"]
