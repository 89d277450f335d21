"""AdaLoRA (Zhang et al. 2023), backed by peft, with its budget schedule run automatically.

::

    x ──► W (frozen) ─────────────────────────────┐
    └──► dropout ─► A (r×in) ─► ⊙E (r) ─► B (out×r) ─► ×(alpha/r) ─► (+) ─► y

Every target starts at ``init_r`` ranks; singular values are pruned down to an average of
``target_r`` per target between steps ``tinit`` and ``total_step - tfinal``. peft requires a call
to ``update_and_allocate(step)`` after every optimizer step; peftkit does it through
:func:`peftkit.on_optimizer_step` (called by :mod:`peftkit.training` and ``PeftkitTrainerCallback``).

Files: ``options.py``, ``inject.py`` (peft's ``AdaLoraModel``), ``handle.py`` (budget schedule,
orthogonality regulariser, resumable allocator state), ``files.py`` (rank-pattern truncation on
save, resizing on load, checks), ``interop.py`` (``adapter_config.json``), ``lowrank.py`` (factor
form for combine / inspect).
"""

from __future__ import annotations

from peftkit.methods.adalora import files, interop, lowrank
from peftkit.methods.adalora.handle import AdaLoraHandle
from peftkit.methods.adalora.inject import build_adalora
from peftkit.methods.adalora.options import AdaLoraOptions
from peftkit.registry import (
    Combining,
    FileHooks,
    LowRankView,
    MethodSpec,
    PeftInterop,
    TensorLayout,
    register_method,
)
from peftkit.targets import by_role

SPEC = MethodSpec(
    name="adalora",
    config_cls=AdaLoraOptions,
    builder=build_adalora,
    mergeable=True,
    peft_type="ADALORA",
    source="peftkit (peft AdaLoRA)",
    description="SVD-parametrised LoRA whose rank budget is reallocated during training (peft's AdaLoRA)",
    default_targets=by_role("attention"),
    layout=TensorLayout(("lora_A", "lora_B", "lora_E")),
    interop=PeftInterop(to_peft=interop.to_peft, from_peft=interop.from_peft),
    files=FileHooks(before_save=files.before_save, check=files.check, after_inject=files.after_inject),
    combining=Combining(
        low_rank=LowRankView(read=lowrank.read, write=lowrank.write, output_scale=lowrank.output_scale)
    ),
    example_options={"total_step": 20},
)


def register() -> None:
    """Entry point: register the ``adalora`` method."""
    register_method(SPEC)


__all__ = ["SPEC", "AdaLoraHandle", "AdaLoraOptions", "build_adalora", "register"]
