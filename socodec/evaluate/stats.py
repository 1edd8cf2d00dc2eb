"""Means with 95 % confidence intervals over files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

__all__ = ["Summary", "summarise"]


@dataclass(frozen=True)
class Summary:
    """Mean of the measurable values and its 95 % confidence interval (Student's t).

    Attributes:
        mean: mean over the ``n`` finite values (NaN when there are none).
        low, high: the interval ``mean -/+ t(0.975, n-1) * sd / sqrt(n)``; NaN when ``n < 2``.
        n: how many files had a finite value (NaN values, e.g. PESQ on silence, are left out).
    """

    mean: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | int | None]:
        """JSON-safe dict: NaN becomes None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in {"mean": self.mean, "ci95_low": self.low, "ci95_high": self.high, "n": self.n}.items()}

    @property
    def half_width(self) -> float:
        """Half the interval's width (the interval may be asymmetric once clipped to the metric's range)."""
        return (self.high - self.low) / 2


def summarise(values: Iterable[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> Summary:
    """Mean and 95 % confidence interval of the finite ``values``, the interval clipped to ``bounds``
    (the metric's possible values: an interval never claims an impossible score)."""
    from scipy.stats import t

    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, n)
    half = float(t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Summary(mean, min(max(mean - half, bounds[0]), mean), max(min(mean + half, bounds[1]), mean), n)
