"""Pure tensor functions behind ``peftkit combine``: low-rank updates in, low-rank updates out.

Every low-rank update of one module is brought into a common *factor form*::

    delta_W (out x in) = scale * B (out x r) @ A (r x in)

Each low-rank method reads its own tensors into this form (its
:class:`~peftkit.registry.LowRankView`); :func:`combine_low_rank` mixes several such updates with one of peft's task-arithmetic
rules (``peft.utils.merge_utils``) and returns a new update in the same form, with the requested
output ``scale`` folded into the factors. Nothing here knows about files or models.

``how``:

* ``linear``: ``A = sum sqrt(w_i s_i / s) A_i``, ``B = sum sqrt(w_i s_i / s) B_i`` (peft's
  ``add_weighted_adapter(combination_type="linear")``; equal ranks; the cross terms make it
  approximate unless one weight is zero).
* ``cat``: ``A = [w_i s_i / s A_i]`` stacked, ``B = [B_i]`` side by side: exactly
  ``sum w_i delta_W_i``, rank ``sum r_i``.
* ``svd``: truncated SVD of ``sum w_i delta_W_i`` to ``rank`` (default: the largest input rank).
* ``ties`` / ``dare_linear`` / ``dare_ties`` / ``magnitude_prune``: peft's rules applied to the
  ``A`` and ``B`` factors separately (equal ranks; need ``density``).
* ``ties_svd`` / ``dare_linear_svd`` / ``dare_ties_svd`` / ``magnitude_prune_svd``: the rule applied
  to the full ``delta_W_i``, then truncated SVD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peftkit.errors import InvalidOptionError, MergeError, did_you_mean
from peftkit.merge.options import COMBINATIONS, NEEDS_DENSITY, SVD_RULES


@dataclass
class LowRank:
    """One module's update in factor form: ``delta_W = scale * B @ A``.

    Attributes:
        A: Down factor, shape ``(r, in_features)``.
        B: Up factor, shape ``(out_features, r)``.
        scale: Scalar multiplier.

    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        """Number of rows of ``A``."""
        return int(self.A.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense update ``scale * B @ A`` (``out x in``, float32)."""
        return self.scale * (self.B.float() @ self.A.float())


@dataclass
class LowRankUpdates:
    """A low-rank adapter read into factor form (what a :class:`~peftkit.registry.LowRankView` returns).

    Attributes:
        updates: Module name -> update, all padded to ``nominal_rank`` where the method prunes ranks.
        ranks: Module name -> rank the file actually stores (pruned ranks excluded).
        nominal_rank: The method's configured rank (``r``, AdaLoRA's ``init_r``).

    """

    updates: dict[str, LowRank]
    ranks: dict[str, int]
    nominal_rank: int


def check_combination(how: str, density: float | None, rank: int | None) -> None:
    """Validate ``how``, ``density`` and ``rank`` before any tensor work.

    Raises:
        InvalidOptionError: Unknown ``how``, a missing or out-of-range ``density``, a bad ``rank``.

    """
    if how not in COMBINATIONS:
        raise InvalidOptionError(
            f"Unknown combination how={how!r}.{did_you_mean(how, COMBINATIONS)} Use one of {', '.join(COMBINATIONS)}."
        )
    if how in NEEDS_DENSITY:
        if density is None:
            raise InvalidOptionError(
                f"how={how!r} prunes each update and needs a density (fraction of values kept), e.g. density=0.5."
            )
    if density is not None and not 0.0 < density <= 1.0:
        raise InvalidOptionError(f"density={density} must lie in (0, 1], e.g. 0.5 keeps half of the values.")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise InvalidOptionError(f"rank={rank!r} must be a positive integer, e.g. rank=8.")


def output_rank(how: str, ranks: Sequence[int], rank: int | None = None) -> int:
    """Rank of the combined update for input ranks ``ranks``.

    Raises:
        MergeError: ``how`` needs equal ranks and they differ, or ``rank`` is given where it means nothing.

    """
    if how == "cat":
        _no_rank(how, rank)
        return int(sum(ranks))
    if how in SVD_RULES:
        return int(rank or max(ranks))
    _no_rank(how, rank)
    if len(set(ranks)) != 1:
        raise MergeError(
            f"how={how!r} mixes the A and B factors entry by entry and needs adapters of equal rank, got ranks "
            f"{list(ranks)}. Use how='cat' (exact, rank = sum) or how='svd' with --rank R."
        )
    return int(ranks[0])


def combine_low_rank(
    updates: Sequence[LowRank],
    weights: Sequence[float],
    how: str = "linear",
    *,
    rank: int | None = None,
    density: float | None = None,
    scale: float = 1.0,
    majority_sign_method: str = "total",
    generator: torch.Generator | None = None,
) -> LowRank:
    """Combine the updates of one module from several adapters.

    Args:
        updates: One update per adapter, in factor form.
        weights: One weight per adapter (may be negative).
        how: Combination rule (see the module docstring).
        rank: Output rank of the SVD rules (default: the largest input rank); not allowed otherwise.
        density: Fraction of values kept by the pruning rules.
        scale: ``scale`` of the returned update; the factors absorb everything else.
        majority_sign_method: ``"total"`` or ``"frequency"`` (TIES sign election).
        generator: Random generator for the DARE rules (their random pruning); ``None`` uses torch's global one.

    Returns:
        The combined update; ``B @ A * scale`` is the combined ``delta_W``.

    Raises:
        InvalidOptionError: Bad ``how`` / ``density`` / ``rank``.
        MergeError: Mismatched shapes or ranks.

    Example:
        >>> a = LowRank(torch.ones(1, 3), torch.ones(2, 1), scale=2.0)
        >>> combine_low_rank([a, a], [0.5, 0.5], "cat").delta()
        tensor([[2., 2., 2.],
                [2., 2., 2.]])

    """
    check_combination(how, density, rank)
    if len(updates) != len(weights) or not updates:
        raise InvalidOptionError(
            f"Got {len(updates)} updates and {len(weights)} weights: give one weight each."
        )
    shapes = {(int(u.B.shape[0]), int(u.A.shape[1])) for u in updates}
    if len(shapes) != 1:
        raise MergeError(f"Updates of one module have different shapes (out, in): {sorted(shapes)}.")
    new_rank = output_rank(how, [u.rank for u in updates], rank)
    with _seeded(generator):
        if how == "cat":
            a = torch.cat(
                [u.A.float() * (w * u.scale / scale) for u, w in zip(updates, weights, strict=True)], dim=0
            )
            b = torch.cat([u.B.float() for u in updates], dim=1)
            return LowRank(a, b, scale)
        if how in SVD_RULES:
            deltas = [u.delta() for u in updates]
            mixed = _apply_rule(
                how.removesuffix("_svd") if how != "svd" else "linear",
                deltas,
                weights,
                density,
                majority_sign_method,
            )
            return svd_low_rank(mixed / scale, new_rank, scale)
        signs = [1.0 if w * u.scale >= 0 else -1.0 for u, w in zip(updates, weights, strict=True)]
        roots = [math.sqrt(abs(w * u.scale / scale)) for u, w in zip(updates, weights, strict=True)]
        a = _apply_rule(
            how,
            [u.A.float() for u in updates],
            [s * r for s, r in zip(signs, roots, strict=True)],
            density,
            majority_sign_method,
        )
        b = _apply_rule(how, [u.B.float() for u in updates], roots, density, majority_sign_method)
        return LowRank(a, b, scale)


def svd_low_rank(delta: torch.Tensor, rank: int, scale: float = 1.0) -> LowRank:
    """Best rank-``rank`` factorisation of ``delta`` (truncated SVD): ``B = U S``, ``A = V^T``.

    ``scale`` is only recorded; ``delta`` must already be divided by it.
    """
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    rank_kept = min(rank, s.shape[0])
    b = u[:, :rank_kept] * s[:rank_kept]
    a = vh[:rank_kept]
    if rank_kept < rank:  # pad with zeros so every module has the requested rank
        a = torch.cat([a, a.new_zeros(rank - rank_kept, a.shape[1])], dim=0)
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - rank_kept)], dim=1)
    return LowRank(a.contiguous(), b.contiguous(), scale)


def average_tensors(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted average ``sum w_i t_i / sum w_i`` (used for heads and bottleneck adapters).

    Raises:
        MergeError: If the weights sum to zero or the shapes differ.

    """
    total = float(sum(weights))
    if abs(total) < 1e-12:
        raise MergeError(
            f"Weights {list(weights)} sum to 0: a weighted average of heads / bottleneck parameters is undefined. "
            "Use weights with a non-zero sum."
        )
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise MergeError(f"Cannot average tensors of different shapes {sorted(shapes)}.")
    out = sum(t.float() * (w / total) for t, w in zip(tensors, weights, strict=True))
    return out.to(tensors[0].dtype)


def _apply_rule(
    how: str,
    tensors: list[torch.Tensor],
    weights: Sequence[float],
    density: float | None,
    majority_sign_method: str,
) -> torch.Tensor:
    from peft.utils import merge_utils  # importing peft takes seconds: only when combining

    w = torch.tensor(list(weights), dtype=torch.float32, device=tensors[0].device)
    if how == "linear":
        return merge_utils.task_arithmetic(tensors, w)
    if how == "magnitude_prune":
        return merge_utils.magnitude_prune(tensors, w, density)
    if how == "ties":
        return merge_utils.ties(tensors, w, density, majority_sign_method)
    if how == "dare_linear":
        return merge_utils.dare_linear(tensors, w, density)
    if how == "dare_ties":
        return merge_utils.dare_ties(tensors, w, density, majority_sign_method)
    raise InvalidOptionError(f"Unknown combination rule {how!r}.")  # unreachable after check_combination


def _no_rank(how: str, rank: int | None) -> None:
    if rank is not None:
        raise InvalidOptionError(
            f"rank={rank} only applies to the SVD rules ({', '.join(SVD_RULES)}); how={how!r} "
            "fixes the rank itself. Drop --rank or use how='svd'."
        )


class _seeded:
    """Context manager running torch's global RNG from ``generator``'s state (peft's DARE uses the global RNG)."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator
        self.saved: torch.Tensor | None = None

    def __enter__(self) -> None:
        if self.generator is not None:
            self.saved = torch.get_rng_state()
            torch.set_rng_state(self.generator.get_state())

    def __exit__(self, *exc: object) -> None:
        if self.generator is not None and self.saved is not None:
            self.generator.set_state(torch.get_rng_state())
            torch.set_rng_state(self.saved)
