"""Saved adapters split into the parts ``combine`` and ``inspect`` work on.

An adapter directory (see :mod:`peftkit.io.layout`) holds peft-keyed tensors: the method's and the
trained task heads'. :func:`view_adapter` splits them, and for methods with a
:class:`~peftkit.registry.LowRankView` (LoRA, AdaLoRA, ...) reads the method's tensors into
per-module updates ``scale * B @ A`` (:mod:`peftkit.merge.tensors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peftkit.io import AdapterFiles
from peftkit.merge.tensors import LowRank
from peftkit.registry import LowRankView


@dataclass
class AdapterView:
    """An adapter directory split into its parts.

    Attributes:
        files: The files as read by :func:`peftkit.io.read_adapter_dir`.
        method: Method name.
        low_rank: The method's factor-form view (``None`` for methods whose updates are not low-rank).
        updates: Low-rank methods: module name -> update in factor form.
        ranks: Low-rank methods: module name -> rank actually stored (after any pruning).
        nominal_rank: The configured rank (0 for methods that are not low-rank).
        heads: Head tensors by file key.
        rest: The method's tensors by file key (those of methods that are not low-rank).

    """

    files: AdapterFiles
    method: str
    low_rank: LowRankView | None = None
    updates: dict[str, LowRank] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    nominal_rank: int = 0
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    rest: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The directory, for messages."""
        return str(self.files.path)


def view_adapter(files: AdapterFiles) -> AdapterView:
    """Split an adapter's tensors into head tensors and the method's (low-rank updates where it has them).

    Raises:
        MergeError: The method's view refuses the tensors (e.g. LoRA on embeddings, a factor missing).

    """
    spec = files.spec
    low_rank = spec.combining.low_rank if spec is not None else None
    view = AdapterView(files=files, method=files.method, low_rank=low_rank, heads=files.head_tensors())
    body = files.method_tensors()
    if low_rank is None:
        view.rest = body
        return view
    read = low_rank.read(files, body)
    view.updates, view.ranks, view.nominal_rank = read.updates, read.ranks, read.nominal_rank
    return view
