"""The prefix module and the forward pre-hook that feeds it to the model (see :mod:`peftkit.methods.prefix`).

:class:`PrefixLayer` is a child module of the wrapped model holding, per adapter name, one matrix
``(num_virtual_tokens, num_layers * 2 * kv_heads * head_dim)``: the keys and values that every
attention layer sees before the real tokens, laid out as peft's ``prompt_embeddings``. It follows
peft's ``BaseTunerLayer`` conventions (so it is switched, frozen, saved and loaded like any adapter
layer) but wraps no base layer: the model's own forward is untouched, and a pre-hook on the model
passes the prefix as a key/value cache and extends the attention mask by the prefix length.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peftkit.errors import MergeError

#: Where the prefix module lives on the wrapped model.
PREFIX_MODULE = "peftkit_prefix"
#: Names transformers gives the key/value cache argument (``cache`` since 5.x, ``past_key_values`` before).
CACHE_ARGS = ("cache", "past_key_values")


class PrefixLayer(nn.Module, BaseTunerLayer):
    """Trainable key/value prefixes for every attention layer, one per adapter name."""

    adapter_layer_names = ("prefix_embeddings",)
    other_param_names = ("prefix_shape",)

    def __init__(self, shape: tuple[int, int, int, int], config: Any, cache_arg: str) -> None:
        """Hold the prefixes of an attention stack.

        ``shape`` is ``(num_layers, kv_heads, head_dim, hidden)``, ``config`` the model's config and
        ``cache_arg`` the name under which the model's forward takes a key/value cache.
        """
        super().__init__()
        self.prefix_embeddings = nn.ParameterDict()
        self.prefix_shape = shape
        self.model_config = config
        self.cache_arg = cache_arg
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = "default"

    def update_layer(
        self, adapter_name: str, num_virtual_tokens: int, init_std: float, like: torch.Tensor
    ) -> None:
        """Add (or replace) the prefix of ``adapter_name`` (fp32, on ``like``'s device)."""
        layers, heads, head_dim, _ = self.prefix_shape
        weight = torch.empty(num_virtual_tokens, layers * 2 * heads * head_dim, device=like.device)
        nn.init.normal_(weight, std=init_std)
        self.prefix_embeddings[adapter_name] = nn.Parameter(weight)
        self.set_adapter(adapter_name)

    def active_prefix(self) -> torch.Tensor | None:
        """The active adapter's prefix matrix, or ``None`` when adapters are off."""
        if self.disable_adapters:
            return None
        return next(
            (self.prefix_embeddings[n] for n in self.active_adapters if n in self.prefix_embeddings), None
        )

    def cache(self, prefix: torch.Tensor, batch_size: int, dtype: torch.dtype) -> Any:
        """A transformers ``DynamicCache`` holding ``prefix`` as every layer's past keys and values."""
        from transformers import DynamicCache

        layers, heads, head_dim, _ = self.prefix_shape
        tokens = prefix.shape[0]
        past = prefix.to(dtype).view(tokens, layers * 2, heads, head_dim).permute(1, 2, 0, 3)
        past = past.unsqueeze(1).expand(layers * 2, batch_size, heads, tokens, head_dim)
        cache = DynamicCache(config=self.model_config)
        for layer in range(layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        return cache

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Prefixes are extra attention inputs, not weight updates: they cannot be merged."""
        raise MergeError(
            "A prefix-tuning adapter adds key/value vectors to every attention layer; it is not a change of any "
            "weight and cannot be merged. Load it with peftkit.load_adapter instead."
        )

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Not called: the model's pre-hook reads the prefix (see :func:`feed_prefix`)."""
        raise RuntimeError("PrefixLayer is read by a pre-hook on the model; it is not called.")


def feed_prefix(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook of the wrapped model: pass the active prefix as a cache, widen the attention mask.

    A call that already carries a non-empty cache (generation after the first step) holds the prefix
    already: only the mask is widened then. Positions the caller passes (``generate`` counts from 0
    over the real tokens) are shifted past the prefix, where the model itself would put them.
    """
    layer: PrefixLayer = getattr(model, PREFIX_MODULE)
    prefix = layer.active_prefix()
    if prefix is None:
        return args, kwargs
    if args:  # positional inputs: name them, so the mask and the cache can be found
        names = list(inspect.signature(model.forward).parameters)
        kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        args = ()
    reference = kwargs.get("input_ids")
    if reference is None:
        reference = kwargs.get("inputs_embeds")
    if reference is None:
        return args, kwargs
    batch_size = reference.shape[0]
    cache_arg = next((name for name in CACHE_ARGS if kwargs.get(name) is not None), None)
    # a cache continues a sequence (prefix included) only when caching is on: generate(use_cache=False)
    # hands back the cache the previous full forward filled, which the next full forward must not extend
    fresh = cache_arg is None or kwargs.get("use_cache") is False or kwargs[cache_arg].get_seq_length() == 0
    if fresh:
        dtype = model.get_input_embeddings().weight.dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        for name in CACHE_ARGS:
            kwargs.pop(name, None)
        kwargs[layer.cache_arg] = layer.cache(prefix, batch_size, dtype)
    tokens = prefix.shape[0]
    for name in (
        "cache_position",
        "position_ids",
    ):  # positions given by the caller (generate) start after the prefix
        if isinstance(kwargs.get(name), torch.Tensor):
            kwargs[name] = kwargs[name] + tokens
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:  # no mask: the model attends to the whole cache by itself
        ones = torch.ones(batch_size, tokens, dtype=mask.dtype, device=mask.device)
        kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)
    return args, kwargs
