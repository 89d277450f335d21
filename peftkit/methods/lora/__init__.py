"""LoRA (Hu et al. 2021), backed by peft's implementation.

::

    x ──► W (frozen) ────────────────┐
    └──► dropout ─► A (r×in) ─► B (out×r) ─► ×(alpha/r) ─► (+) ─► y

``B`` starts at zero, so the wrapped model equals the base model at step 0. peft dispatches the
layer type (``nn.Linear``, GPT-2 ``Conv1D``, bitsandbytes 8-bit / 4-bit layers); files are peft's
own (``peft_type: LORA``), so ``peft.PeftModel.from_pretrained`` loads them. Updates are linear:
the adapter folds into the base weights, and adapters combine exactly (``cat``) or with peft's
task-arithmetic rules.

Files: ``options.py`` (options), ``inject.py`` (peft's ``LoraModel``), ``interop.py``
(``adapter_config.json``), ``lowrank.py`` (factor form for combine / inspect).
"""

from __future__ import annotations

from peftkit.methods.lora import interop, lowrank
from peftkit.methods.lora.inject import build_lora
from peftkit.methods.lora.options import LoraOptions
from peftkit.registry import Combining, LowRankView, MethodSpec, PeftInterop, TensorLayout, register_method
from peftkit.targets import by_role

#: LoRA's tensors in an adapter file (``lora_embedding_*`` when an embedding is adapted).
LORA_TENSORS = ("lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B")
#: Its combine / inspect view.
LORA_LOW_RANK = LowRankView(read=lowrank.read, write=lowrank.write, output_scale=lowrank.output_scale)

SPEC = MethodSpec(
    name="lora",
    config_cls=LoraOptions,
    builder=build_lora,
    mergeable=True,
    peft_type="LORA",
    source="peftkit (peft LoRA)",
    description="Low-rank updates B @ A of the attention projections (peft's LoRA layers)",
    default_targets=by_role("attention"),
    layout=TensorLayout(LORA_TENSORS),
    interop=PeftInterop(to_peft=interop.to_peft, from_peft=interop.from_peft, claims=interop.claims_lora),
    combining=Combining(low_rank=LORA_LOW_RANK),
)


def register() -> None:
    """Entry point: register the ``lora`` method."""
    register_method(SPEC)


__all__ = ["SPEC", "LoraOptions", "build_lora", "register"]
