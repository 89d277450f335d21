"""Scaled parallel adapters (He et al. 2022), implemented in peftkit.

He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning" (ICLR 2022).

::

    x (block input) ──► FFN (frozen) ───────────────────────────┐
      └──► down (in→in/reduction) ─► act ─► up (zero init) ─► ×s ─► (+) ─► y

The bottleneck runs *beside* the feed-forward block: it reads the block's input and its output is
added to the block's output (He et al. found this placement, with scaling ``s = 4``, the best of
the adapter variants). ``up`` starts at zero, so the wrapped model equals the base at step 0. The
layer wraps the block's output projection; a forward pre-hook on the block's first projection hands
it the block input. Non-linear: not mergeable; adapters of the same shape combine by averaging.
Files use peft's layout with ``peft_type: PARALLEL``.

Files: ``options.py``, ``layer.py`` (:class:`ParallelAdapterLayer`, imported when building: it needs
peft), ``inject.py`` (pairs each output projection with its block's input projection).
"""

from __future__ import annotations

from peftkit.methods.parallel.inject import build_parallel
from peftkit.methods.parallel.options import ParallelOptions
from peftkit.registry import Combining, MethodSpec, TensorLayout, register_method
from peftkit.targets import by_role

SPEC = MethodSpec(
    name="parallel",
    config_cls=ParallelOptions,
    builder=build_parallel,
    mergeable=False,
    peft_type="PARALLEL",
    source="peftkit",
    description="Scaled parallel bottleneck beside each feed-forward block (He et al. 2022)",
    default_targets=by_role("ffn_output"),
    layout=TensorLayout(tuple(f"parallel_{part}.{p}" for part in ("down", "up") for p in ("weight", "bias"))),
    combining=Combining(must_match=("reduction_factor", "scaling", "non_linearity", "input_modules")),
)


def register() -> None:
    """Entry point: register the ``parallel`` method."""
    register_method(SPEC)


__all__ = ["SPEC", "ParallelOptions", "build_parallel", "register"]
