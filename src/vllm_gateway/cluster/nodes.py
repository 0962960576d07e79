"""What the gateway knows of a cluster's nodes, and the seam the inventory reads them through.

:class:`NodeSource` is implemented by :class:`~vllm_gateway.cluster.ray_cluster.RayCluster`
against a real cluster and by :class:`FakeNodes` in tests, so the inventory's rules are tested
in-process without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class ClusterError(Exception):
    """The cluster cannot be used at all (unreachable, wrong version, a node without sizes)."""


@dataclass(frozen=True)
class NodeInfo:
    id: str  # Ray's node id (hex)
    ip: str
    gpu_count: int
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return f"{self.ip} ({self.id[:12]})"

    def names(self) -> frozenset[str]:
        """What a model's ``node:`` may call it: its id, short id, IP or a label's value."""
        return frozenset({self.id, self.id[:12], self.ip, *self.labels.values()})

    def matches(self, wanted: str) -> bool:
        return wanted in self.names()


class NodeSource(Protocol):
    async def alive_nodes(self) -> list[NodeInfo]:
        """The nodes the cluster says are alive now."""

    async def gpu_memory_gb(self, node: NodeInfo) -> list[float] | None:
        """Total memory of each GPU of the node (NVML there); None where it has no NVML."""

    async def ping(self, node: NodeInfo, timeout_s: float) -> bool:
        """Whether the node answers a call now (a node Ray still lists may be gone)."""


class FakeNodes:
    """A cluster in memory: tests add and remove nodes and decide what each answers."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.memory: dict[str, list[float] | None] = {}
        self.unreachable: set[str] = set()
        self.memory_reads = 0

    def add(self, node_id: str, gpu_count: int, memory: list[float] | None = None,
            ip: str = "10.0.0.1") -> NodeInfo:
        node = NodeInfo(node_id, ip, gpu_count)
        self.nodes[node_id] = node
        self.memory[node_id] = memory
        return node

    def remove(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)

    async def alive_nodes(self) -> list[NodeInfo]:
        return list(self.nodes.values())

    async def gpu_memory_gb(self, node: NodeInfo) -> list[float] | None:
        self.memory_reads += 1
        return self.memory.get(node.id)

    async def ping(self, node: NodeInfo, timeout_s: float) -> bool:
        return node.id in self.nodes and node.id not in self.unreachable
