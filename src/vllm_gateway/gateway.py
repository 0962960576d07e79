"""The composition root: builds the gateway's services, wires them, and closes them.

Nothing here exists at import and nothing here decides: the HTTP client pools,
the launchers, the runtime (manager and monitor) are created when the app
starts and closed in a fixed order when it stops, so a test process can run
many gateways side by side. Every duty of a model's life belongs to the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil

from . import planner, upstream
from .backend_metrics import scrape_backend_metrics
from .cluster.nodes import ClusterError
from .config import GatewayConfig
from .events import EventKind, EventLog
from .gpu import GpuDiscoveryError, GpuReader, NullGpuReader, NvmlReader, inventory, open_nvml
from .launchers.base import Launcher, LaunchError
from .launchers.pgroups import GroupRecords
from .launchers.subprocess import SubprocessLauncher
from .metrics import Metrics
from .proxy import Proxy
from .runtime.clock import Clock, SystemClock
from .runtime.costs import LoadCosts
from .runtime.lora_api import HttpLoraControl
from .runtime.manager import Manager
from .runtime.monitor import Monitor
from .runtime.sleep_api import HttpSleepControl, SleepControl
from .runtime.status import status as runtime_status
from .runtime.transitions import Services
from .runtime.vram import MeasuredVram

if TYPE_CHECKING:
    from .cluster.inventory import Inventory
    from .cluster.ray_cluster import RayCluster

log = logging.getLogger("vllm_gateway")

_GIB = 1024 ** 3
HOST_RESERVE_SHARE = 0.10  # host_memory_gb: auto keeps this share of RAM for everything else


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "vllm-gateway"


def _subprocess_launcher(gw: Gateway) -> Launcher:
    records = GroupRecords(gw.state_dir / f"pgroups-{gw.config.server.port}.json",
                           gw.config.faults.stop_grace_s)
    return SubprocessLauncher(records)


def _docker_launcher(gw: Gateway) -> Launcher:
    from .launchers.docker import DockerLauncher
    return DockerLauncher(gw.config.container_prefix, gw.instance_id)


def _ray_launcher(gw: Gateway) -> Launcher:
    from .launchers.ray import RayLauncher
    assert gw.cluster is not None and gw.inventory is not None
    return RayLauncher(gw.cluster, gw.inventory)


# Which launchers a gateway builds, by the name models give in `launcher:`. Those no model
# names are not built (Docker's client, for one, wants an engine).
LAUNCHERS: dict[str, Callable[[Gateway], Launcher]] = {
    "subprocess": _subprocess_launcher,
    "docker": _docker_launcher,
    "ray": _ray_launcher,
}


class Gateway:
    def __init__(self, config: GatewayConfig, *, nvml: Any = None,
                 launchers: Mapping[str, Launcher] | None = None, clock: Clock | None = None,
                 sleep_control: SleepControl | None = None) -> None:
        self.config = config
        self.events = EventLog()
        self.metrics = Metrics()
        self.metrics.prime(config.models)
        self.started_at = time.time()
        self.accepting = False
        self.shutting_down = False
        self.clock: Clock = clock or SystemClock()
        self._nvml_module = nvml
        self._launchers_override = launchers
        self._sleep_override = sleep_control
        self.gpus_reader: GpuReader = NullGpuReader()
        self.upstream: upstream.Client | None = None
        self.probe_session: aiohttp.ClientSession | None = None
        self._manager: Manager | None = None
        self._monitor: Monitor | None = None
        self._proxy: Proxy | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The Ray cluster this gateway drives (launcher: ray, gpus: ray), and its GPUs.
        self.cluster: RayCluster | None = None
        self.inventory: Inventory | None = None
        self.state_dir = Path(config.state_dir) if config.state_dir else default_state_dir()
        self.instance_id = hashlib.sha1(
            f"{config.server.host}:{config.server.port}".encode()).hexdigest()[:12]

    @property
    def manager(self) -> Manager:
        assert self._manager is not None, "the gateway has not started"
        return self._manager

    @property
    def proxy(self) -> Proxy:
        assert self._proxy is not None, "the gateway has not started"
        return self._proxy

    def _uses_ray(self) -> bool:
        return self.config.gpus == "ray" or any(
            m.launcher == "ray" for m in self.config.models.values() if m.managed)

    async def _open_ray(self) -> None:
        """Join the cluster as a driver and take stock of its nodes; a ClusterError that
        names the key at fault when it cannot be used."""
        from .cluster.inventory import Inventory
        from .cluster.ray_cluster import RayCluster

        self.cluster = RayCluster(self.config.ray)
        self.cluster.connect()
        self.inventory = Inventory(self.cluster, self.config.ray.gpu_vram_gb, self._on_inventory)
        await self.inventory.refresh(strict=True)
        if self.config.gpus != "ray":
            return
        widest = self.inventory.max_gpus_per_node()
        for model in self.config.models.values():
            if model.managed and model.vram_gb > 0 and model.gpu_count > widest:
                raise ClusterError(
                    f"models.{model.name}.gpu_count: {model.gpu_count} GPUs on one node, but the "
                    f"largest node of the Ray cluster at {self.config.ray.address!r} has {widest} "
                    "(a model's GPUs are always on one node)")

    def _on_inventory(self, gpus: list[planner.Gpu], causes: Mapping[str, str]) -> None:
        from .runtime.nodes import set_gpus

        for cause in causes.values():
            self.events.add("-", EventKind.NODE, cause)
        if self._manager is not None and self.inventory is not None and self.config.gpus == "ray":
            set_gpus(self._manager, gpus, causes, self.inventory.node_names())

    def _open_gpus(self) -> list[planner.Gpu]:
        gpus = self.config.gpus
        if gpus == "ray":
            assert self.inventory is not None
            return self.inventory.gpus()
        if gpus == "auto" or self._nvml_module is not None:
            try:
                reader = (NvmlReader(self._nvml_module) if self._nvml_module is not None
                          else open_nvml())
            except GpuDiscoveryError:
                raise
            except Exception as exc:
                raise GpuDiscoveryError(f"gpus: auto: NVML failed: {exc}") from exc
            self.gpus_reader = reader
        declared = list(gpus) if isinstance(gpus, tuple) else None
        nvml = self.gpus_reader if isinstance(self.gpus_reader, NvmlReader) else None
        return inventory(declared, nvml if gpus == "auto" else None)

    def _host_total_gb(self) -> float:
        declared = self.config.host_memory_gb
        if declared != "auto":
            return float(declared)
        return psutil.virtual_memory().total / _GIB * (1 - HOST_RESERVE_SHARE)

    def _make_launchers(self) -> dict[str, Launcher]:
        if self._launchers_override is not None:
            return dict(self._launchers_override)
        wanted = {"subprocess"} | {m.launcher for m in self.config.models.values()}
        return {kind: make(self) for kind, make in LAUNCHERS.items() if kind in wanted}

    async def start(self) -> None:
        if self._uses_ray():
            await self._open_ray()
        gpus = self._open_gpus()
        pool = self.config.http_pool_size or max(
            sum(m.max_concurrent for m in self.config.models.values()), 100)
        self.upstream = upstream.Client(limit=pool)
        self.probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32, force_close=True))
        launchers = self._make_launchers()
        for kind, launcher in launchers.items():
            try:
                cleaned = await launcher.cleanup_leftovers()
            except LaunchError as exc:
                # Models of other launchers still work; this one's models fail on start with
                # the same message.
                log.warning("%s launcher: cannot clean leftovers: %s", kind, exc)
                continue
            for what in cleaned:
                self.events.add("-", EventKind.CLEANUP, f"removed leftover {what} from a previous run")
        svc = Services(
            config=self.config, launchers=launchers, events=self.events, metrics=self.metrics,
            probe=self.probe, gpus_reader=self.gpus_reader,
            sleep=self._sleep_override or HttpSleepControl(self.probe_session),
            lora=HttpLoraControl(self.probe_session),
            clock=self.clock,
            costs=LoadCosts(self.state_dir / f"load-costs-{self.config.server.port}.json"),
            vram=MeasuredVram(self.state_dir / f"measured-vram-{self.config.server.port}.json"))
        self._manager = Manager(svc, gpus, self._host_total_gb())
        probe_session = self.probe_session
        self._monitor = Monitor(self._manager,
                                lambda base, name: scrape_backend_metrics(probe_session, base, name))
        self._proxy = Proxy(self.upstream, self.config.retry, self.metrics)
        self.metrics.watch(self.status)
        self._monitor.start()
        if self.inventory is not None:
            self._manager.claims.node_names = self.inventory.node_names()
            self.inventory.start()
        self._tasks.append(asyncio.create_task(self._manager.preload()))
        self.accepting = True
        log.info("gateway ready: %d models, GPUs %s", len(self.config.models),
                 [(g.id, g.total_gb) for g in gpus] or "not accounted")

    async def begin_shutdown(self) -> None:
        """Stop accepting: readiness fails and models no longer start. Requests in flight
        get ``server.shutdown_timeout_s`` to finish; the rest are then cancelled."""
        self.accepting = False
        self.shutting_down = True
        if self._manager is not None:
            self._manager.begin_shutdown()
            self._tasks.append(asyncio.create_task(
                self._manager.drain_requests(self.config.server.shutdown_timeout_s)))

    async def close(self) -> None:
        """The shutdown order: stop the duties, stop every model, then close the clients."""
        self.shutting_down = True
        if self._monitor is not None:
            await self._monitor.stop()
        if self.inventory is not None:
            await self.inventory.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._manager is not None:
            await self._manager.shutdown()
            for launcher in self._manager.svc.launchers.values():
                with contextlib.suppress(Exception):
                    await launcher.close()
        if self.upstream is not None:
            self.upstream.close()
        if self.probe_session is not None:
            await self.probe_session.close()
        with contextlib.suppress(Exception):
            self.gpus_reader.close()
        if self.cluster is not None:
            self.cluster.close()

    async def probe(self, url: str, timeout_s: float) -> bool:
        assert self.probe_session is not None
        try:
            async with self.probe_session.get(
                    url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = (runtime_status(self._manager) if self._manager is not None
                               else {"gpus": [], "models": [], "host_memory": None})
        for model in doc["models"]:
            model["recent"] = self.metrics.recent.summary(model["name"])
        if self.inventory is not None:
            ips = self.inventory.node_ips()
            for entry in (*doc["gpus"], *doc["models"]):
                entry["node_ip"] = ips.get(entry.get("node") or "")
        doc["accepting"] = self.accepting
        doc["uptime_s"] = round(time.time() - self.started_at, 1)
        return doc
