"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024), backed by peft.

::

    W' = m ⊙ (W + s·B A) / ‖W + s·B A‖_col        m (out) trained, starts at ‖W‖_col
    x ──► W' ──► y

The pretrained weight is split into a magnitude ``m`` (one value per output feature) and a
direction; LoRA updates the direction, ``m`` is trained directly. With ``B = 0`` and ``m = ‖W‖``
the wrapped model equals the base at step 0. It is LoRA with peft's ``use_dora=True``: same
options, same injection (peft's ``LoraModel``), same files plus ``<module>.lora_magnitude_vector``,
loadable by peft. It folds into the base weights; it cannot be combined, because the column norm
needs the base weights that adapter files do not hold.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from peftkit.methods.lora import LORA_TENSORS
from peftkit.methods.lora import interop as lora_interop
from peftkit.methods.lora.inject import build_lora
from peftkit.methods.lora.options import LoraOptions
from peftkit.registry import Combining, MethodSpec, PeftInterop, TensorLayout, register_method
from peftkit.targets import by_role

_MAGNITUDE = ".lora_magnitude_vector"


@dataclasses.dataclass
class DoraOptions(LoraOptions):
    """Options of the ``"dora"`` method: LoRA's (``r``, ``alpha``, ``dropout``, ``use_rslora``)."""

    method_name = "dora"
    use_dora: ClassVar[bool] = True


def _magnitude_to_file(key: str) -> str:
    """Peft writes the magnitude ``...lora_magnitude_vector.weight`` as ``...lora_magnitude_vector``."""
    return key.removesuffix(".weight") if key.endswith(_MAGNITUDE + ".weight") else key


def _magnitude_from_file(key: str) -> str:
    return key + ".weight" if key.endswith(_MAGNITUDE) else key


SPEC = MethodSpec(
    name="dora",
    config_cls=DoraOptions,
    builder=build_lora,
    mergeable=True,
    peft_type="LORA",
    source="peftkit (peft DoRA)",
    description="Weight-decomposed LoRA: a trained magnitude per output feature, LoRA on the direction",
    default_targets=by_role("attention"),
    layout=TensorLayout(
        (*LORA_TENSORS, "lora_magnitude_vector.weight"),
        to_file=_magnitude_to_file,
        from_file=_magnitude_from_file,
    ),
    interop=PeftInterop(
        to_peft=lora_interop.to_peft, from_peft=lora_interop.from_peft, claims=lora_interop.claims_dora
    ),
    combining=Combining(
        refused="DoRA normalises every merged weight by its column norm, which needs the base weights that adapter "
        "files do not hold; merge each DoRA adapter into the base instead (peftkit merge), or combine LoRA adapters"
    ),
)


def register() -> None:
    """Entry point: register the ``dora`` method."""
    register_method(SPEC)


__all__ = ["SPEC", "DoraOptions", "register"]
