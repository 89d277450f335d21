"""``combine_adapters``: several adapters of one method and one base into one adapter directory.

::

    dirs ─read─► checks (method, base fingerprint, targets, heads + labels, ranks)
         ─► low-rank methods (the method's LowRankView): per module, combine_low_rank(updates,
            weights, how) (peft's rules); other methods' weights and the heads: weighted average
            sum w_i t_i / sum w_i
         ─► write_adapter_dir(out)   (atomic; loads with peftkit.load_adapter)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from peftkit.errors import BaseModelMismatchError, InvalidOptionError, MergeError
from peftkit.io import fingerprints_match, read_adapter_dir, write_adapter_dir
from peftkit.io.fingerprint import describe_fingerprint, mismatch_reason
from peftkit.merge.adapters import AdapterView, view_adapter
from peftkit.merge.tensors import average_tensors, check_combination, combine_low_rank, output_rank

logger = logging.getLogger(__name__)


def combine_adapters(
    dirs: Sequence[str | os.PathLike[str]],
    weights: Sequence[float] | None = None,
    how: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str = "total",
    progress: bool = False,
) -> Path:
    """Combine adapters of the same method, trained on the same base, into one adapter directory.

    Updates of low-rank methods (LoRA, AdaLoRA) are combined per module with ``how`` (see
    :mod:`peftkit.merge.tensors`: ``linear``, ``cat``, ``svd``, ``ties``, ``dare_linear``,
    ``dare_ties``, ``magnitude_prune`` and the ``*_svd`` variants). Task heads and the weights of
    other methods (bottleneck and parallel adapters, IA³, prefixes; ``how="linear"`` only) are
    averaged with normalised weights ``w_i / sum(w)``; a method may refuse combining (DoRA). The result is a normal adapter directory:
    ``peftkit.load_adapter(base, out_dir)`` loads it onto the common base.

    Args:
        dirs: Two or more adapter directories.
        weights: One weight per adapter (default ``1/N`` each). For LoRA they multiply each update
            (task arithmetic), so ``(1, 1)`` adds two updates and ``(1, 0)`` returns the first.
        how: Combination rule. Default: ``cat`` for low-rank methods (exactly ``sum w_i delta_W_i``,
            so equal weights average the updates), ``linear`` (parameter averaging) for the others. Note that LoRA's ``linear`` is peft's rule, which mixes the ``A`` and ``B``
            factors separately and is not the weighted sum of the updates.
        out_dir: Output directory, which must not exist yet (written atomically).
        rank: Output rank of the SVD rules (default: the largest input rank).
        density: Fraction of values kept by ``ties`` / ``dare_*`` / ``magnitude_prune`` (required there).
        seed: Seed of the random pruning of the ``dare_*`` rules.
        majority_sign_method: TIES sign election, ``"total"`` or ``"frequency"``.
        progress: Show a tqdm bar over modules.

    Returns:
        The output directory.

    Raises:
        InvalidOptionError: Bad ``how`` / ``weights`` (NaN or infinite included) / ``density`` / ``rank``,
            fewer than two adapters, or ``out_dir`` exists.
        BaseModelMismatchError: The adapters were trained on different bases.
        MergeError: Different methods, targets, head labels, ranks (for the rules needing equal ranks).

    Example:
        >>> peftkit.combine_adapters(["runs/a", "runs/b"], [0.7, 0.3], "svd", "runs/mix", rank=8)  # doctest: +SKIP

    """
    if out_dir is None:
        raise InvalidOptionError(
            "combine_adapters needs out_dir, the directory to write the combined adapter to."
        )
    if len(dirs) < 2:
        raise InvalidOptionError(f"combine_adapters needs at least two adapter directories, got {len(dirs)}.")
    weights = [1.0 / len(dirs)] * len(dirs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dirs):
        raise InvalidOptionError(
            f"Got {len(weights)} weights for {len(dirs)} adapters: give one weight per adapter."
        )
    if not all(math.isfinite(w) for w in weights):
        raise InvalidOptionError(
            f"weights={weights} must be finite numbers (NaN or infinity would fill the combined adapter with NaN), "
            "e.g. --weights 0.5 0.5."
        )
    out = Path(out_dir)
    if out.exists():
        inputs = {Path(d).resolve() for d in dirs}
        what = "is one of the adapters being combined" if out.resolve() in inputs else "already exists"
        raise InvalidOptionError(
            f"Output directory {str(out)!r} {what}; pick a new --out (or remove it first). Nothing was written."
        )
    views = [view_adapter(read_adapter_dir(d)) for d in dirs]
    if how is None:
        how = "cat" if views[0].low_rank is not None else "linear"
    check_combination(how, density, rank)
    check_compatible(views, how, rank)
    first = views[0]
    generator = torch.Generator(device="cpu").manual_seed(seed)  # adapter files are read to the CPU
    dtype = next(iter(first.files.tensors.values())).dtype
    tensors: dict[str, torch.Tensor] = {}
    options = dict(first.files.options)
    peft_config = dict(first.files.peft_config)
    if first.low_rank is not None:
        new_rank = output_rank(how, [v.nominal_rank for v in views], rank)
        scale = first.low_rank.output_scale(new_rank)
        combined = {}
        for module in tqdm(
            sorted(first.updates), desc="Combining", unit="module", disable=None if progress else True
        ):
            combined[module] = combine_low_rank(
                [v.updates[module] for v in views],
                weights,
                how,
                rank=rank,
                density=density,
                scale=scale,
                majority_sign_method=majority_sign_method,
                generator=generator,
            )
        tensors, peft_config, options = first.low_rank.write(first.files, combined, new_rank, dtype)
    else:
        for key in first.rest:
            tensors[key] = average_tensors([v.rest[key] for v in views], weights)
    for key in first.heads:
        tensors[key] = average_tensors([v.heads[key] for v in views], weights)
    meta = _combined_meta(first, options, views, weights, how, rank, density, seed)
    layout = first.files.layout
    path = write_adapter_dir(
        out_dir, peft_config, meta, tensors, key_to_file=layout.file_key if layout is not None else None
    )
    logger.info("Combined %d %s adapters with %s into %s", len(views), first.method, how, path)
    return path


def check_compatible(views: Sequence[AdapterView], how: str, rank: int | None = None) -> None:
    """Refuse adapters that cannot be combined, saying which one differs and how.

    Raises:
        BaseModelMismatchError: Different base fingerprints.
        MergeError: Different methods, targets, heads, head labels or options; unequal ranks for
            rules that need equal ranks; a method that cannot be combined.

    """
    first = views[0]
    for other in views[1:]:
        pair = f"{first.name!r} and {other.name!r}"
        if other.method != first.method:
            raise MergeError(
                f"Cannot combine {pair}: methods differ ({first.method!r} vs {other.method!r}). Combine adapters of "
                "one method only."
            )
        _check_same_base(first, other, pair)
        if set(other.files.targets) != set(first.files.targets):
            only = sorted(set(first.files.targets) ^ set(other.files.targets))
            raise MergeError(
                f"Cannot combine {pair}: they adapt different modules (e.g. {', '.join(only[:3])}). Train them with "
                "the same target_modules."
            )
        _check_same_heads(first, other, pair)
    spec = first.files.spec
    if spec is None or spec.combining.refused:
        reason = (
            spec.combining.refused
            if spec is not None
            else f"its plugin {first.files.plugin!r} is not installed"
        )
        raise MergeError(f"{first.method!r} adapters cannot be combined: {reason}.")
    if first.low_rank is None:
        if how != "linear":
            raise MergeError(
                f"{first.method!r} adapters are combined by parameter averaging only: use how='linear', not {how!r}."
            )
        _check_same_options(views, spec.combining.must_match)
        return
    try:
        output_rank(how, [v.nominal_rank for v in views], rank)
    except MergeError as exc:
        ranks = ", ".join(f"{v.name!r}: {v.nominal_rank}" for v in views)
        raise MergeError(f"{exc} (ranks: {ranks})") from None


def _check_same_options(views: Sequence[AdapterView], names: tuple[str, ...] | None) -> None:
    """Averaging parameters only makes sense between adapters of the same architecture."""
    first = views[0]
    for other in views[1:]:
        keys = names if names is not None else sorted(set(first.files.options) | set(other.files.options))
        for option in keys:
            a, b = first.files.options.get(option), other.files.options.get(option)
            if a != b:
                raise MergeError(
                    f"Cannot average {first.method!r} adapters {first.name!r} and {other.name!r}: {option} differs "
                    f"({a!r} vs {b!r}). Only adapters with the same architecture can be averaged."
                )


def _check_same_base(first: AdapterView, other: AdapterView, pair: str) -> None:
    a, b = first.files.fingerprint, other.files.fingerprint
    if a is None or b is None:
        logger.warning("Cannot verify that %s share a base model: a base fingerprint is missing.", pair)
        return
    if not fingerprints_match(a, b):
        raise BaseModelMismatchError(
            f"Cannot combine {pair}: they were trained on different base models ({describe_fingerprint(a)} vs "
            f"{describe_fingerprint(b)}: {mismatch_reason(a, b)}). Combine adapters of the same base only."
        )


def _check_same_heads(first: AdapterView, other: AdapterView, pair: str) -> None:
    if set(first.heads) != set(other.heads):
        raise MergeError(
            f"Cannot combine {pair}: they train different task heads ({first.files.heads} vs {other.files.heads})."
        )
    for key, tensor in first.heads.items():
        if tuple(other.heads[key].shape) != tuple(tensor.shape):
            raise MergeError(
                f"Cannot combine {pair}: head tensor {key!r} has shapes {tuple(tensor.shape)} vs "
                f"{tuple(other.heads[key].shape)} (different numbers of labels)."
            )
    labels_a = (first.files.meta.get("heads") or {}).get("id2label")
    labels_b = (other.files.meta.get("heads") or {}).get("id2label")
    if first.heads and labels_a and labels_b and labels_a != labels_b:
        raise MergeError(
            f"Cannot combine {pair}: their heads predict different label sets ({_labels(labels_a)} vs "
            f"{_labels(labels_b)}); averaging them would mix unrelated classes."
        )


def _labels(id2label: dict[str, str]) -> str:
    return (
        "["
        + ", ".join(id2label[k] for k in sorted(id2label, key=lambda k: int(k) if k.isdigit() else k))
        + "]"
    )


def _combined_meta(
    first: AdapterView,
    options: dict[str, Any],
    views: Sequence[AdapterView],
    weights: Sequence[float],
    how: str,
    rank: int | None,
    density: float | None,
    seed: int,
) -> dict[str, Any]:
    from peftkit import __version__

    meta = {k: v for k, v in first.files.meta.items() if k not in ("files", "format_version")}
    meta.update(
        peftkit_version=__version__,
        method=first.method,
        options=options,
        targets=sorted(first.files.targets),
    )
    meta["combined_from"] = {
        "adapters": [{"path": v.name, "weight": w} for v, w in zip(views, weights, strict=True)],
        "how": how,
        "rank": rank,
        "density": density,
        "seed": seed,
    }
    return meta
