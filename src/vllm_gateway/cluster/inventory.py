"""The GPUs of a Ray cluster's alive nodes (``gpus: ray``), kept current while the gateway runs.

Each GPU gets an id unique across the whole inventory, never reused while the gateway runs,
so a model's placement can never point at another node's GPU. A GPU's size is what NVML
reports on its node, else ``ray.gpu_vram_gb``. The watcher polls the cluster: a node that
joins adds its GPUs; a node that leaves (or whose agent stopped answering, reported by the
launcher through :meth:`Inventory.lose`) takes its GPUs away at once, and ``on_change`` is
told the cause per node, so the models there fail with it. A node reported lost that still
answers afterwards comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..planner import Gpu
from .nodes import ClusterError, NodeInfo, NodeSource

log = logging.getLogger("vllm_gateway.cluster")

POLL_S = 1.0
PING_TIMEOUT_S = 3.0
# The new GPU list, and for each node that left, why (the models there fail with it).
OnChange = Callable[[list[Gpu], Mapping[str, str]], None]


@dataclass(frozen=True)
class NodeGpus:
    node: NodeInfo
    ids: tuple[int, ...]  # inventory-wide ids, in the node's own GPU order
    totals_gb: tuple[float, ...]


class Inventory:
    def __init__(self, source: NodeSource, default_gb: float | None, on_change: OnChange,
                 poll_s: float = POLL_S) -> None:
        self.source = source
        self.default_gb = default_gb
        self.on_change = on_change
        self.poll_s = poll_s
        self.nodes: dict[str, NodeGpus] = {}
        self._lost: dict[str, NodeInfo] = {}  # reported lost, still listed by the cluster
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- reading --------------------------------------------------------------------------

    def gpus(self) -> list[Gpu]:
        return [Gpu(gpu_id, total, entry.node.id)
                for entry in self.nodes.values()
                for gpu_id, total in zip(entry.ids, entry.totals_gb, strict=True)]

    def locate(self, gpu_ids: Sequence[int]) -> tuple[NodeInfo, tuple[int, ...]]:
        """The node of a placement and the GPUs' indices on that node; KeyError when a GPU
        is not (any more) in the inventory."""
        for entry in self.nodes.values():
            if gpu_ids and gpu_ids[0] in entry.ids:
                local = tuple(entry.ids.index(g) for g in gpu_ids)
                return entry.node, local
        raise KeyError(f"GPUs {list(gpu_ids)} are in no alive node")

    def total_gb(self, gpu_id: int) -> float:
        for entry in self.nodes.values():
            if gpu_id in entry.ids:
                return entry.totals_gb[entry.ids.index(gpu_id)]
        raise KeyError(gpu_id)

    def node_for(self, wanted: str | None) -> NodeInfo | None:
        """A node for a model that needs no GPU: the one it names, else the first alive."""
        for entry in self.nodes.values():
            if wanted is None or entry.node.matches(wanted):
                return entry.node
        return None

    def node_ips(self) -> dict[str, str]:
        return {entry.node.id: entry.node.ip for entry in self.nodes.values()}

    def node_names(self) -> dict[str, frozenset[str]]:
        return {entry.node.id: entry.node.names() for entry in self.nodes.values()}

    def max_gpus_per_node(self) -> int:
        return max((len(e.ids) for e in self.nodes.values()), default=0)

    # -- changes --------------------------------------------------------------------------

    async def _sizes(self, node: NodeInfo) -> tuple[float, ...] | None:
        if node.gpu_count == 0:
            return ()
        nvml = await self.source.gpu_memory_gb(node)
        if nvml is not None and len(nvml) >= node.gpu_count:
            return tuple(round(total, 2) for total in nvml[:node.gpu_count])
        if self.default_gb is not None:
            return (self.default_gb,) * node.gpu_count
        return None

    async def refresh(self, strict: bool = False) -> bool:
        """One look at the cluster; True when the GPU list changed. ``strict`` (at start):
        a node whose GPU sizes cannot be known is an error instead of being left out."""
        alive = {node.id: node for node in await self.source.alive_nodes()}
        causes = {node_id: f"node {entry.node.short} left the Ray cluster"
                  for node_id, entry in self.nodes.items() if node_id not in alive}
        for node_id in list(self._lost):
            if node_id not in alive:
                del self._lost[node_id]
            elif await self.source.ping(alive[node_id], PING_TIMEOUT_S):
                log.info("node %s answers again", alive[node_id].short)
                del self._lost[node_id]
        new = [node for node_id, node in alive.items()
               if node_id not in self.nodes and node_id not in self._lost]
        # Read in parallel: the first read on a node makes its agent (a Ray worker, seconds).
        read = await asyncio.gather(*(self._sizes(node) for node in new))
        joined = []
        for node, sizes in zip(new, read, strict=True):
            if sizes is None:
                message = (f"ray.gpu_vram_gb: node {node.short} has {node.gpu_count} GPU(s) "
                           "and no NVML to read their memory; set ray.gpu_vram_gb")
                if strict:
                    raise ClusterError(message)
                log.warning("%s; the node is left out", message)
                continue
            ids = tuple(range(self._next_id, self._next_id + len(sizes)))
            self._next_id += len(sizes)
            self.nodes[node.id] = NodeGpus(node, ids, sizes)
            joined.append(node)
        for node_id in causes:
            del self.nodes[node_id]
        for node in joined:
            log.info("node %s joined with %d GPU(s)", node.short, node.gpu_count)
        for cause in causes.values():
            log.warning("%s", cause)
        if joined or causes:
            self.on_change(self.gpus(), causes)
            return True
        return False

    def lose(self, node_id: str, cause: str) -> None:
        """The launcher found the node's agent gone: its GPUs leave now, not at the next poll
        (the cluster may list a dead node as alive for many seconds)."""
        entry = self.nodes.pop(node_id, None)
        if entry is None:
            return
        self._lost[node_id] = entry.node
        log.warning("%s", cause)
        self.on_change(self.gpus(), {node_id: cause})
        self._wake.set()

    # -- the watcher ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a failed poll is retried, not fatal
                log.warning("reading the Ray cluster's nodes failed: %s", exc)
