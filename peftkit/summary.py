"""``peftkit.summary``: trainable and total parameters, broken down by kind of module."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from peftkit.state import adapter_parameters, get_state, unwrap_model


@dataclass
class Summary:
    """Parameter counts of a (wrapped) model.

    Attributes:
        trainable: Parameters with ``requires_grad=True``.
        total: All parameters (each shared tensor counted once; int8 weights count their elements).
        by_kind: Parameter count per kind: ``"backbone"`` (frozen base), ``"head"`` (task-head
            copies), and one entry per adapter, e.g. ``"lora:default"``.
        trainable_by_kind: Like ``by_kind`` but trainable parameters only.

    """

    trainable: int
    total: int
    by_kind: dict[str, int] = field(default_factory=dict)
    trainable_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def trainable_fraction(self) -> float:
        """``trainable / total`` (0 for an empty model)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        """A small aligned table."""
        rows = [f"{'kind':<24}{'params':>14}{'trainable':>14}"]
        for kind, count in self.by_kind.items():
            rows.append(f"{kind:<24}{count:>14,}{self.trainable_by_kind.get(kind, 0):>14,}")
        rows.append(f"{'total':<24}{self.total:>14,}{self.trainable:>14,}")
        rows.append(f"trainable: {100 * self.trainable_fraction:.3f}%")
        return "\n".join(rows)


def summary(model: nn.Module) -> Summary:
    """Count trainable / total parameters per module kind.

    Args:
        model: Any model, wrapped by peftkit or not.

    Returns:
        A :class:`Summary`; ``print(summary(model))`` shows a table.

    Example:
        >>> print(peftkit.summary(model))  # doctest: +SKIP
        kind                            params     trainable
        backbone                    22,713,216             0
        lora:default                    73,728        73,728
        head                             3,465         3,465

    """
    inner = unwrap_model(model)
    kind_of: dict[int, str] = {}
    state = get_state(inner)
    if state is not None:
        for name, record in state.adapters.items():
            for full_name, param in adapter_parameters(inner, name).items():
                is_head = ".modules_to_save." in full_name
                kind_of[id(param)] = "head" if is_head else f"{record.method}:{name}"
    by_kind: dict[str, int] = {"backbone": 0}
    trainable_by_kind: dict[str, int] = {"backbone": 0}
    seen: set[int] = set()
    for param in inner.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        kind = kind_of.get(id(param), "backbone")
        by_kind[kind] = by_kind.get(kind, 0) + param.numel()
        trainable_by_kind[kind] = trainable_by_kind.get(kind, 0) + (
            param.numel() if param.requires_grad else 0
        )
    return Summary(
        trainable=sum(trainable_by_kind.values()),
        total=sum(by_kind.values()),
        by_kind=by_kind,
        trainable_by_kind=trainable_by_kind,
    )
