"""What the bottleneck-shaped methods (``adapter`` and ``parallel``) compute alike, per adapter name.

Both add ``scaling * up(dropout(act(down(h))))`` to a frozen projection's output; they differ in
what ``h`` is (the projection's output, or the block's input) and in an optional layer norm.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from peftkit.methods.base import ACTIVATIONS


def bottleneck_options(config: Any) -> dict[str, Any]:
    """The per-adapter modules and scale of ``config`` (its ``non_linearity``, ``dropout``, ``scaling``)."""
    return {
        "activation": getattr(nn, ACTIVATIONS[config.non_linearity])(),
        "dropout": nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity(),
        "scaling": config.scaling,
    }


def add_bottleneck(
    out: torch.Tensor,
    h: torch.Tensor,
    down: nn.Linear,
    up: nn.Linear,
    options: dict[str, Any],
    norm: nn.Module | None = None,
) -> torch.Tensor:
    """``out + scaling * up(dropout(act(down(norm(h)))))``, computed in the adapter's dtype, added in ``out``'s."""
    h = h if h.dtype == down.weight.dtype else h.to(down.weight.dtype)
    if norm is not None:
        h = norm(h)
    h = up(options["dropout"](options["activation"](down(h))))
    if h.dtype == out.dtype:  # one fused kernel, no separate multiply forward or backward
        return torch.add(out, h, alpha=options["scaling"])
    return out + (options["scaling"] * h).to(out.dtype)


def set_dropout_mode(options_by_adapter: Iterable[dict[str, Any]], mode: bool) -> None:
    """Put every adapter's dropout module (kept outside the module tree) in train or eval mode."""
    for options in options_by_adapter:
        options["dropout"].train(mode)
