"""Robust summary statistics of repeated measurements: median, quartiles, min, max."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    """Summary of repeated measurements of one quantity.

    Attributes:
        median: Median of the samples.
        q1: First quartile (25th percentile, linear interpolation).
        q3: Third quartile (75th percentile).
        min: Smallest sample.
        max: Largest sample.
        n: Number of samples.

    """

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        """Interquartile range ``q3 - q1``."""
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """IQR relative to the median (0 for a zero median)."""
        return self.iqr / self.median if self.median else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (the IQR included)."""
        return {**asdict(self), "iqr": self.iqr}

    def fmt(self, digits: int = 1, scale: float = 1.0) -> str:
        """``"median [q1-q3]"``, values multiplied by ``scale``, e.g. ``"812.3 [790.1-830.0]"``."""
        if self.n <= 1:
            return f"{self.median * scale:,.{digits}f}"
        return (
            f"{self.median * scale:,.{digits}f} [{self.q1 * scale:,.{digits}f}-{self.q3 * scale:,.{digits}f}]"
        )


def summarize(samples: Sequence[float]) -> Stat:
    """Median, quartiles and range of ``samples`` (at least one value).

    Example:
        >>> summarize([1.0, 2.0, 3.0, 4.0]).median
        2.5

    """
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("summarize() needs at least one sample")
    return Stat(
        median=statistics.median(values),
        q1=_quantile(values, 0.25),
        q3=_quantile(values, 0.75),
        min=values[0],
        max=values[-1],
        n=len(values),
    )


def stat_from_dict(data: dict[str, Any]) -> Stat:
    """Rebuild a :class:`Stat` from :meth:`Stat.to_dict` output."""
    return Stat(
        median=data["median"], q1=data["q1"], q3=data["q3"], min=data["min"], max=data["max"], n=data["n"]
    )


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
