"""Means with 95 % confidence intervals, so two renders (or ours and upstream's figure) can be compared."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class MeanCI:
    n: int
    mean: float | None
    std: float | None
    ci95_low: float | None
    ci95_high: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Iterable[float | None]) -> MeanCI:
    """Mean over the songs that have a value, with a Student-t 95 % interval (none below two songs)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return MeanCI(0, None, None, None, None)
    mean = sum(xs) / n
    if n == 1:
        return MeanCI(1, mean, None, None, None)
    from scipy.stats import t

    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return MeanCI(n, mean, std, mean - half, mean + half)
