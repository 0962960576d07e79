"""Random shapes of the trace workloads: request sizes, arrivals, popularity, think times.

Every function takes the caller's :class:`random.Random`, so a workload is a pure
function of its seed. Request sizes follow the percentiles of the Azure LLM
inference trace 2023 (TRACES.md): sampled by inverse transform over those
percentiles, interpolated in log space, which keeps their long tails.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Quantiles:
    """A distribution given by points ``(probability, value)``, increasing in both."""

    points: tuple[tuple[float, float], ...]

    def sample(self, rng: random.Random) -> int:
        u = rng.random()
        for (p0, v0), (p1, v1) in itertools.pairwise(self.points):
            if u <= p1:
                share = (u - p0) / (p1 - p0)
                return max(1, round(math.exp(math.log(v0) + share * (math.log(v1) - math.log(v0)))))
        return round(self.points[-1][1])


def _azure(p10: float, p50: float, p90: float, p99: float) -> Quantiles:
    # The ends are not published: half the p10 below, a fifth over the p99 above.
    return Quantiles(((0.0, p10 / 2), (0.1, p10), (0.5, p50), (0.9, p90), (0.99, p99),
                      (1.0, p99 * 1.2)))


@dataclass(frozen=True)
class SizeShape:
    prompt: Quantiles
    output: Quantiles


CODE = SizeShape(_azure(147, 1469, 5188, 7436), _azure(7, 13, 55, 251))
CONVERSATION = SizeShape(_azure(207, 1020, 2734, 4142), _azure(54, 129, 424, 601))
SHAPES = {"code": CODE, "conversation": CONVERSATION}


def gamma_gap(rng: random.Random, mean_s: float, cv: float) -> float:
    """A Gamma inter-arrival time of the given mean and coefficient of variation."""
    shape = 1.0 / (cv * cv)
    return rng.gammavariate(shape, mean_s / shape)


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(median), sigma)


def geometric(rng: random.Random, mean: float) -> int:
    """Trials up to the first success (1, 2, ...), with the given mean."""
    p = 1.0 / mean
    count = 1
    while rng.random() >= p:
        count += 1
    return count


def zipf_weights(count: int, exponent: float) -> list[float]:
    raw = [1.0 / (rank**exponent) for rank in range(1, count + 1)]
    total = sum(raw)
    return [value / total for value in raw]


def pick(rng: random.Random, items: Sequence[str], weights: Sequence[float]) -> str:
    return rng.choices(list(items), weights=list(weights), k=1)[0]
