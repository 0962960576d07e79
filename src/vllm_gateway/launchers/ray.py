"""Model servers on the nodes of a Ray cluster (``launcher: ray``).

The planner picks a node and GPUs; this launcher reserves them in Ray's books (see
``cluster.ray_cluster``) and asks that node's agent to start the model's command there,
as the subprocess launcher does here: its own process group, output captured, ``{port}`` a
free port on that node, ``CUDA_VISIBLE_DEVICES`` the node's own indices of the chosen GPUs.
The gateway then proxies to ``http://node_ip:port``. An agent that stops answering means its
node is lost: the handle exits with that cause and the inventory drops the node at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from ..cluster.inventory import Inventory
from ..cluster.nodes import ClusterError, NodeInfo
from ..cluster.ray_cluster import RayCluster, gpu_share
from .base import LaunchError, LaunchSpec, LocalServer
from .subprocess import format_argv

log = logging.getLogger("vllm_gateway.launcher")

LOG_POLL_S = 1.0
CALL_SLACK_S = 30.0  # beyond a stop's own grace, before an agent counts as not answering


class RayServerHandle(LocalServer):
    def __init__(self, launcher: RayLauncher, node: NodeInfo, agent: Any, key: str, host: str,
                 port: int, reservation: Any, name: str) -> None:
        super().__init__(port)
        self._launcher = launcher
        self.node = node
        self._agent = agent
        self._key = key
        self._host = host
        self._reservation = reservation
        self._name = name
        self._cause: str | None = None
        self._tasks = [asyncio.create_task(self._watch_exit()),
                       asyncio.create_task(self._pull_logs())]

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def pid(self) -> int | None:
        return None  # the process runs on another node

    def _lost(self, exc: BaseException) -> None:
        if self._cause is None:
            self._cause = (f"node {self.node.short} lost: the gateway's agent there stopped "
                           f"answering ({type(exc).__name__})")
            self._logs.append(self._cause)
            self._launcher.node_lost(self.node, self._cause)
        self._exited_with(-1)

    async def _watch_exit(self) -> None:
        from ray.exceptions import RayError

        try:
            code = await self._agent.wait_exit.remote(self._key)
        except RayError as exc:
            self._lost(exc)
            return
        self._exited_with(int(code))

    async def _pull_logs(self) -> None:
        from ray.exceptions import RayError

        seq = 0
        while True:
            try:
                seq, lines, done = await self._agent.logs_after.remote(self._key, seq, LOG_POLL_S)
            except RayError:
                return  # the exit watcher reports the loss
            for line in lines:
                self._logs.append(line)
                log.debug("[%s] %s", self._name, line)
            if done:
                return

    async def stop(self, grace_s: float) -> None:
        from ray.exceptions import RayError

        if self._cause is None:
            try:
                await asyncio.wait_for(self._agent.stop.remote(self._key, grace_s),
                                       grace_s + CALL_SLACK_S)
            except (RayError, TimeoutError) as exc:
                self._lost(exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), 5.0)
        self._exited_with(-1)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._launcher.cluster.release(self._reservation)
        self._reservation = None


class RayLauncher:
    def __init__(self, cluster: RayCluster, inventory: Inventory) -> None:
        self.cluster = cluster
        self.inventory = inventory
        self._keys = itertools.count(1)

    def node_lost(self, node: NodeInfo, cause: str) -> None:
        self.cluster.forget(node.id)
        self.inventory.lose(node.id, cause)

    def _node(self, spec: LaunchSpec) -> tuple[NodeInfo, tuple[int, ...], float]:
        model = spec.model
        if spec.gpu_ids:
            try:
                node, local = self.inventory.locate(spec.gpu_ids)
            except KeyError as exc:
                raise LaunchError(f"model {model.name}: {exc.args[0]}") from None
            total = self.inventory.total_gb(spec.gpu_ids[0])
            return node, local, gpu_share(model.vram_gb, total, len(spec.gpu_ids))
        found = self.inventory.node_for(model.node)
        if found is None:
            where = f"node {model.node!r} (models.{model.name}.node)" if model.node else "node"
            raise LaunchError(f"model {model.name}: no alive {where} in the Ray cluster")
        return found, (), 0.0

    async def start(self, spec: LaunchSpec) -> RayServerHandle:
        from ray.exceptions import RayError, RayTaskError

        model = spec.model
        if model.command is None:
            raise LaunchError(f"model {model.name} has no command")
        node, local, share = self._node(spec)
        values = spec.placeholders()
        values.update(port="{port}", gpu_ids=",".join(map(str, local)))
        argv = format_argv(model.command, values)
        env = {**model.env, **spec.env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, local))}
        key = f"{model.name}-{next(self._keys)}"
        try:
            reservation = await self.cluster.reserve(node, share, key)
        except ClusterError as exc:
            raise LaunchError(f"model {model.name}: {exc}") from None
        try:
            agent = await self.cluster.agent(node)
            info = await agent.start.remote(key, argv, env, spec.port, model.name)
        except RayTaskError as exc:
            self.cluster.release(reservation)
            raise LaunchError(f"model {model.name} on node {node.short}: {exc.cause}") from None
        except (RayError, TimeoutError) as exc:
            self.cluster.release(reservation)
            cause = f"node {node.short} lost: {type(exc).__name__}"
            self.node_lost(node, cause)
            raise LaunchError(f"model {model.name}: {cause}") from None
        except BaseException:
            self.cluster.release(reservation)
            raise
        log.info("[%s] started on node %s, port %d, GPUs %s (Ray GPU %g): %s", model.name,
                 node.short, info["port"], list(local) or "none", share, " ".join(argv))
        return RayServerHandle(self, node, agent, key, str(info["host"]), int(info["port"]),
                               reservation, model.name)

    async def cleanup_leftovers(self) -> list[str]:
        # The agents and reservations are owned by this driver: Ray removes them with it.
        return []

    async def close(self) -> None:
        return None
