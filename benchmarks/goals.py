"""Goals as pass/fail lines: measured ratio, target, verdict."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Any

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Goal:
    """One measurable goal.

    Attributes:
        name: Short description, e.g. ``"peftkit LoRA / peft LoRA training step time (32x32)"``.
        value: Measured ratio (``None`` if it could not be measured).
        op: Comparison against the target: ``"<="``, ``"<"``, ``">="`` or ``">"``.
        target: Target ratio.
        spread: ``"[q1-q3]"`` of the ratio over repeats, if it was measured repeatedly.
        note: How it was measured.

    """

    name: str
    value: float | None
    op: str
    target: float
    spread: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"N/A"`` (not measured)."""
        if self.value is None:
            return "N/A"
        return "PASS" if _OPS[self.op](self.value, self.target) else "FAIL"

    def line(self) -> str:
        """``"PASS  name: 1.004 <= 1.02"`` for the console."""
        value = "n/a" if self.value is None else f"{self.value:.3f}"
        spread = f" {self.spread}" if self.spread else ""
        return f"{self.verdict:<4}  {self.name}: {value}{spread} (target {self.op} {self.target:g})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict including the verdict."""
        return {**asdict(self), "verdict": self.verdict}


def goal_from_dict(data: dict[str, Any]) -> Goal:
    """Rebuild a :class:`Goal` from :meth:`Goal.to_dict` output."""
    return Goal(
        name=data["name"],
        value=data["value"],
        op=data["op"],
        target=data["target"],
        spread=data.get("spread", ""),
        note=data.get("note", ""),
    )


def margin(goal: Goal) -> float:
    """How far a goal is from failing, relative to its target (negative: failing by that much)."""
    if goal.value is None:
        return float("inf")
    if goal.op in ("<=", "<"):
        return (goal.target - goal.value) / goal.target
    return (goal.value - goal.target) / goal.target
