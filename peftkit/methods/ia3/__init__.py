"""(IA)³: learned rescaling of activations (Liu et al. 2022), backed by peft.

::

    attention key / value:   y = l ⊙ (W x)          l (out) starts at 1
    feed-forward output:     y = W (l ⊙ x)          l (in)  starts at 1

One vector per adapted layer, initialised to ones, so the wrapped model equals the base at step 0
and the adapter is tiny (a few thousand values for MiniLM). Default targets: the attention keys
and values and the feed-forward output projection (which is scaled on its input). It folds into
the base weights (a diagonal scaling), loads in peft (``peft_type: IA3``), and adapters combine
by averaging their vectors.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftkit._peft import targets_conv1d, uses_conv1d
from peftkit.methods.base import MethodConfig, check_regex
from peftkit.registry import Combining, MethodSpec, PeftInterop, TensorLayout, register_method
from peftkit.targets import by_role, default_targets, matches

if TYPE_CHECKING:
    from peft import IA3Config

    from peftkit.state import AdapterRecord


@dataclasses.dataclass
class IA3Options(MethodConfig):
    """Options of the ``"ia3"`` method.

    Attributes:
        feedforward_modules: Which targets are feed-forward layers (scaled on their input): module-name
            suffixes or one regular expression; ``None``: the architecture's feed-forward output
            projection. Must be among the targets.

    """

    feedforward_modules: list[str] | str | None = None

    method_name = "ia3"

    def validate(self) -> None:
        """Check the feed-forward pattern."""
        if isinstance(self.feedforward_modules, str):
            check_regex("feedforward_modules", self.feedforward_modules)


def feedforward_patterns(model: nn.Module, config: IA3Options) -> list[str] | str:
    """The configured feed-forward patterns, or the architecture's feed-forward output projection."""
    if config.feedforward_modules is not None:
        return config.feedforward_modules
    return default_targets(model, "ffn_output")


def peft_ia3_config(
    targets: list[str] | str, feedforward: list[str] | str, fan_in_fan_out: bool
) -> IA3Config:
    """A ``peft.IA3Config``."""
    from peft import IA3Config

    return IA3Config(target_modules=targets, feedforward_modules=feedforward, fan_in_fan_out=fan_in_fan_out)


def build_ia3(model: nn.Module, config: IA3Options, adapter_name: str, targets: list[str] | str) -> None:
    """Learned scaling vectors on keys, values and feed-forward inputs (peft's IA³ layers)."""
    from peft.tuners.ia3 import IA3Layer, IA3Model

    feedforward = feedforward_patterns(model, config)
    IA3Model(model, peft_ia3_config(targets, feedforward, uses_conv1d(model, targets)), adapter_name)
    for module in model.modules():
        if isinstance(module, IA3Layer) and not getattr(module, _DTYPE_HOOK, False):
            module.register_forward_hook(_output_in_input_dtype)
            setattr(module, _DTYPE_HOOK, True)


_DTYPE_HOOK = "_peftkit_output_in_input_dtype"


def _output_in_input_dtype(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Give an (IA)³ layer's output its input's dtype.

    peft's 4-bit (IA)³ layer returns float32 for bfloat16 inputs (it up-casts the input, then keeps the
    output's new dtype), and attention then meets fp32 keys next to bf16 queries.
    """
    x = args[0] if args else None
    if isinstance(output, torch.Tensor) and isinstance(x, torch.Tensor) and output.dtype != x.dtype:
        if x.is_floating_point() and output.is_floating_point():
            return output.to(x.dtype)
    return output


def to_peft(model: nn.Module, record: AdapterRecord) -> dict[str, Any]:
    """``adapter_config.json``: the adapted and feed-forward modules by full name, as peft matches them."""
    targets = sorted(record.targets)
    patterns = feedforward_patterns(model, record.config)
    feedforward = [name for name in targets if matches(name, patterns)]
    return peft_ia3_config(targets, feedforward, targets_conv1d(model, targets)).to_dict()


def from_peft(peft_config: dict[str, Any]) -> dict[str, Any]:
    """The feed-forward modules peft reads."""
    return {"feedforward_modules": peft_config.get("feedforward_modules")}


SPEC = MethodSpec(
    name="ia3",
    config_cls=IA3Options,
    builder=build_ia3,
    mergeable=True,
    peft_type="IA3",
    source="peftkit (peft IA3)",
    description="Learned scaling vectors on keys, values and feed-forward inputs (peft's (IA)3)",
    default_targets=by_role("key_value", "ffn_output"),
    layout=TensorLayout(("ia3_l",)),
    interop=PeftInterop(to_peft=to_peft, from_peft=from_peft),
    combining=Combining(must_match=("feedforward_modules",)),
)


def register() -> None:
    """Entry point: register the ``ia3`` method."""
    register_method(SPEC)


__all__ = ["SPEC", "IA3Options", "build_ia3", "register"]
