"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), implemented in peftkit.

An adapter wraps the *output projection* of a transformer sub-layer and adds a small residual
bottleneck to its output, before the sub-layer's own residual connection::

    h = W_out(x)  (frozen; nn.Linear, GPT-2 Conv1D or a bitsandbytes 8-bit / 4-bit layer)
    y = h + scaling * up(dropout(act(down(norm(h)))))
            └ in→in/reduction_factor ┘└ back to in, zero-initialised ┘

* ``placement="houlsby"``: after the attention output and after the feed-forward output.
* ``placement="pfeiffer"``: after the feed-forward output only.

``up`` starts at zero, so the wrapped model equals the base model at step 0. The layer follows
peft's conventions (``BaseTunerLayer``: weights in ``ModuleDict``s keyed by adapter name), so
several adapters live on one model, and files use peft's layout with ``peft_type: ADAPTER``
(``BOTTLENECK`` before 0.2, still read). Adapters are non-linear: they cannot be merged into the
base weights; ``peftkit combine`` averages the parameters of adapters of the same shape.

Files: ``options.py``, ``layer.py`` (:class:`AdapterLayer`, imported when building: it needs
peft), ``inject.py``.
"""

from __future__ import annotations

from peftkit.methods.adapter.inject import build_adapter, placement_targets
from peftkit.methods.adapter.options import AdapterOptions
from peftkit.registry import Combining, MethodSpec, TensorLayout, register_method

SPEC = MethodSpec(
    name="adapter",
    config_cls=AdapterOptions,
    builder=build_adapter,
    mergeable=False,
    peft_type="ADAPTER",
    legacy_peft_types=("BOTTLENECK",),
    source="peftkit",
    description="Bottleneck adapters after sub-layer outputs (Houlsby or Pfeiffer placement)",
    default_targets=placement_targets,
    layout=TensorLayout(
        tuple(f"adapter_{part}.{p}" for part in ("down", "up", "norm") for p in ("weight", "bias"))
    ),
    combining=Combining(
        must_match=("placement", "reduction_factor", "non_linearity", "scaling", "layer_norm")
    ),
)


def register() -> None:
    """Entry point: register the ``adapter`` method."""
    register_method(SPEC)


__all__ = ["SPEC", "AdapterOptions", "build_adapter", "register"]
