"""Merge adapters into base models and combine several adapters into one.

Public API::

    from peftkit.merge import merge_adapter, combine_adapters

    merged = merge_adapter("bert-base", "runs/ner-lora", "runs/ner-merged")          # plain transformers model
    combine_adapters(["runs/a", "runs/b"], [0.7, 0.3], "svd", "runs/mix", rank=8)     # a new adapter dir

Modules: :mod:`~peftkit.merge.tensors` (pure functions on low-rank updates),
:mod:`~peftkit.merge.adapters` (adapter files <-> updates), :mod:`~peftkit.merge.fold` (fold an
adapter carried by a live model), :mod:`~peftkit.merge.into_base` (``merge_adapter``),
:mod:`~peftkit.merge.combine` (``combine_adapters``), :mod:`~peftkit.merge.describe` (``peftkit inspect``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftkit import _lazy
from peftkit.merge.options import COMBINATIONS

__getattr__, __dir__ = _lazy.install(
    __name__,
    {
        **dict.fromkeys(("check_compatible", "combine_adapters"), "peftkit.merge.combine"),
        "fold_adapter": "peftkit.merge.fold",
        **dict.fromkeys(("load_base_for", "merge_adapter"), "peftkit.merge.into_base"),
        **dict.fromkeys(("LowRank", "combine_low_rank", "svd_low_rank"), "peftkit.merge.tensors"),
    },
)

if TYPE_CHECKING:
    from peftkit.merge.combine import check_compatible, combine_adapters
    from peftkit.merge.fold import fold_adapter
    from peftkit.merge.into_base import load_base_for, merge_adapter
    from peftkit.merge.tensors import LowRank, combine_low_rank, svd_low_rank

__all__ = [
    "merge_adapter",
    "combine_adapters",
    "fold_adapter",
    "load_base_for",
    "check_compatible",
    "combine_low_rank",
    "svd_low_rank",
    "LowRank",
    "COMBINATIONS",
]
