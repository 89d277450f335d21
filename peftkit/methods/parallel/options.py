"""Options of the ``"parallel"`` method (scaled parallel adapters)."""

from __future__ import annotations

import dataclasses

from peftkit.methods.base import (
    ACTIVATIONS,
    MethodConfig,
    check_dropout,
    check_positive,
    check_regex,
    check_scale,
    require,
)


@dataclasses.dataclass
class ParallelOptions(MethodConfig):
    """Options of the ``"parallel"`` method.

    ``target_modules`` select the feed-forward *output* projections the adapter's output is added
    to (default: the architecture's ``ffn_output`` role); ``input_modules`` the block's first
    projection, whose input the adapter reads (default: the ``ffn_input`` role), paired with each
    target by their common parent module.

    Attributes:
        reduction_factor: Block input width divided by the bottleneck size.
        scaling: Multiplier of the adapter output (He et al. 2022 use 4).
        non_linearity: ``"relu"``, ``"gelu"``, ``"silu"``/``"swish"`` or ``"tanh"``.
        dropout: Dropout inside the bottleneck, in [0, 1).
        input_modules: The block-input projections: module-name suffixes or one regular expression.

    """

    reduction_factor: float = 16.0
    scaling: float = 4.0
    non_linearity: str = "relu"
    dropout: float = 0.0
    input_modules: list[str] | str | None = None

    method_name = "parallel"
    aliases = {"reduction": "reduction_factor", "activation": "non_linearity", "s": "scaling"}

    def validate(self) -> None:
        """Check the reduction factor, scaling, activation, dropout and input pattern."""
        check_positive("reduction_factor", self.reduction_factor, "16")
        require(self.scaling != 0, "scaling=0 turns the adapter off: use e.g. scaling=4 (He et al.).")
        check_scale("scaling", self.scaling, "scaling")
        require(
            self.non_linearity in ACTIVATIONS,
            f"non_linearity={self.non_linearity!r} is unknown: use one of {', '.join(ACTIVATIONS)}.",
        )
        check_dropout("dropout", self.dropout)
        if isinstance(self.input_modules, str):
            check_regex("input_modules", self.input_modules)
