"""Which CPUs the proxy, the upstream and the load generators run on.

The proxy under test gets a CPU of its own wherever the machine has two or
more, so that the load generator's work is not billed to it and every proxy
competes for the same single core (nginx runs one worker per proxy CPU). The
upstream shares the load generator's CPUs on small machines: it is the same
for every proxy, so it shifts all figures alike and the ratios hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    proxy: tuple[int, ...] | None
    upstream: tuple[int, ...] | None
    load: tuple[int, ...] | None
    note: str

    def as_json(self) -> dict[str, object]:
        return {
            "proxy": self.proxy,
            "upstream": self.upstream,
            "load": self.load,
            "note": self.note,
        }


def plan(cpus: list[int]) -> Placement:
    """Split ``cpus`` (sorted, distinct) between proxy, upstream and load generators."""
    if len(cpus) < 2:
        return Placement(None, None, None, "one CPU: nothing pinned, figures include contention")
    proxy = (cpus[0],)
    if len(cpus) == 2:
        rest = (cpus[1],)
        return Placement(
            proxy, rest, rest, "proxy alone on one CPU; upstream and load share the other"
        )
    return Placement(
        proxy, (cpus[1],), tuple(cpus[2:]), "proxy, upstream and load generators on separate CPUs"
    )


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))
