"""The gateway as a Ray driver: connecting, listing nodes, the agent on each node, and GPU
reservations in Ray's own books. Ray is imported here and only here (and in the agent),
lazily, so the gateway installs and runs without it.

GPU accounting: the gateway chooses the GPUs (the planner), and Ray must not hand the same
GPUs to other jobs of the cluster. Each model holds a placement group on its node, one
bundle pinned to the node by its ``ray.io/node-id`` label: ``vram_gb / total`` of a GPU
(rounded down to Ray's 0.0001 steps, so models that fit on paper fit in Ray's books) for a
one-GPU model, whole GPUs for a tensor-parallel one. Ray allocates fractions best fit, as the
planner does, so with the gateway alone on its GPUs both pick the same GPU (measured). A
reservation that Ray cannot grant at once (other jobs hold those GPUs) fails the start with
that reason, and the model backs off; nothing waits in Ray's queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
from typing import Any
from urllib.parse import urlparse

from ..config import RayConfig
from ..launchers.ray_agent import NodeAgent
from .nodes import ClusterError, NodeInfo

log = logging.getLogger("vllm_gateway.cluster")

REACH_TIMEOUT_S = 5.0
AGENT_START_S = 60.0
RESERVE_TIMEOUT_S = 2.0
RAY_STEP = 10_000  # Ray counts resources in units of 1/10000


def gpu_share(vram_gb: float, total_gb: float, gpu_count: int) -> float:
    """What a model asks of Ray's GPU resource on its node."""
    if gpu_count > 1:
        return float(gpu_count)
    if gpu_count <= 0 or vram_gb <= 0 or total_gb <= 0:
        return 0.0
    share = math.floor(vram_gb / total_gb * RAY_STEP) / RAY_STEP
    return min(max(share, 1 / RAY_STEP), 1.0)


def _check_reachable(address: str) -> None:
    """Ray retries an address where nothing listens for minutes; say so in seconds."""
    if address == "auto":
        # auto: RAY_ADDRESS when set, else the cluster `ray start` recorded on this machine.
        env = os.environ.get("RAY_ADDRESS")
        if not env:
            return
        address = env
    url = urlparse(address if "://" in address else f"gcs://{address}")
    if not url.hostname or not url.port:
        raise ClusterError(f"ray.address: {address!r} is not 'auto', 'host:port' or "
                           "'ray://host:port'")
    try:
        with socket.create_connection((url.hostname, url.port), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(f"ray.address: cannot reach the Ray cluster at {address!r}: "
                           f"{exc}") from exc



class RayCluster:
    def __init__(self, config: RayConfig) -> None:
        self.config = config
        self._agents: dict[str, Any] = {}
        self._creating: dict[str, asyncio.Task[Any]] = {}
        self._agent_class: Any = None

    def connect(self) -> None:
        address = self.config.address
        _check_reachable(address)
        try:
            import ray
        except ImportError as exc:
            raise ClusterError("ray.address: Ray is not installed; pip install "
                               "'vllm-gateway[ray]'") from exc
        # Ray's core installs its own SIGTERM handler, which aborts the process; the
        # gateway's shutdown order must run instead, so the handlers before it come back.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            ray.init(address=address, namespace=self.config.namespace, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        except Exception as exc:  # Ray's own error, named, is the message
            raise ClusterError(f"ray.address: cannot connect to the Ray cluster at {address!r}: "
                               f"{type(exc).__name__}: {exc}") from exc
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        self._agent_class = ray.remote(NodeAgent)
        log.info("connected to the Ray cluster at %s (namespace %s)", address,
                 self.config.namespace)

    def close(self) -> None:
        import ray

        self._agents.clear()
        if ray.is_initialized():
            ray.shutdown()

    # -- nodes ----------------------------------------------------------------------------

    async def alive_nodes(self) -> list[NodeInfo]:
        import ray

        listed = await asyncio.to_thread(ray.nodes)
        return [NodeInfo(n["NodeID"], n["NodeManagerAddress"], int(n["Resources"].get("GPU", 0)),
                         dict(n.get("Labels") or {}))
                for n in listed if n.get("Alive")]

    async def agent(self, node: NodeInfo) -> Any:
        """The node's agent, created (and waited for) on first use."""
        found = self._agents.get(node.id)
        if found is not None:
            return found
        task = self._creating.get(node.id)
        if task is None:
            task = asyncio.create_task(self._create_agent(node))
            self._creating[node.id] = task
            task.add_done_callback(lambda _t: self._creating.pop(node.id, None))
        return await asyncio.shield(task)

    async def _create_agent(self, node: NodeInfo) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        agent = self._agent_class.options(
            num_cpus=0, num_gpus=0, max_restarts=0, max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False)).remote()
        await asyncio.wait_for(agent.info.remote(), AGENT_START_S)
        self._agents[node.id] = agent
        return agent

    def forget(self, node_id: str) -> None:
        """Its agent is gone: the next use creates a new one."""
        self._agents.pop(node_id, None)

    async def gpu_memory_gb(self, node: NodeInfo) -> list[float] | None:
        agent = await self.agent(node)
        info = await agent.info.remote()
        sizes: list[float] | None = info.get("nvml_gb")
        return sizes

    async def ping(self, node: NodeInfo, timeout_s: float) -> bool:
        """The node's agent answers, or a new one could be made there. Pings of one node share
        one creation, so a node that stays silent does not pile up actors."""
        from ray.exceptions import RayError

        known = self._agents.get(node.id)
        if known is not None:
            try:
                await asyncio.wait_for(known.info.remote(), timeout_s)
                return True
            except RayError:
                self.forget(node.id)
            except TimeoutError:
                return False
        try:
            await asyncio.wait_for(self.agent(node), timeout_s)
            return True
        except (RayError, TimeoutError):
            return False

    # -- GPU reservations in Ray's books --------------------------------------------------

    async def reserve(self, node: NodeInfo, gpus: float, name: str) -> Any:
        """A placement group holding ``gpus`` of the node's GPU resource; None for 0."""
        if gpus <= 0:
            return None
        from ray.util import placement_group, remove_placement_group

        group = placement_group([{"GPU": gpus}], name=name,
                                bundle_label_selector=[{"ray.io/node-id": node.id}])
        if not await asyncio.to_thread(group.wait, RESERVE_TIMEOUT_S):
            remove_placement_group(group)
            raise ClusterError(f"Ray has no {gpus:g} GPU free on node {node.short} for the "
                               "placement: other Ray jobs hold this node's GPUs")
        return group

    def release(self, group: Any) -> None:
        if group is None:
            return
        from ray.util import remove_placement_group

        try:
            remove_placement_group(group)
        except Exception as exc:  # noqa: BLE001 - a lost node took its reservation with it
            log.debug("removing placement group %s: %s", group, exc)
