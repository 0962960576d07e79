"""The gateway's services, built by ``create_app`` and started with the web app.

Nothing here exists at import: the HTTP client pool, the background loops and
the launchers are created when the app starts and closed when it stops, so a
test process can run many gateways side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from . import planner
from .backend_metrics import scrape_backend_metrics
from .config import GatewayConfig
from .events import EventLog
from .gpu import GpuDiscoveryError, NvmlReader, inventory, open_nvml
from .instance import Instance
from .launchers.base import Launcher, LaunchError
from .launchers.pgroups import GroupRecords
from .launchers.subprocess import SubprocessLauncher
from .lifecycle import State
from .manager import Manager
from .metrics import Metrics
from .proxy import Proxy

log = logging.getLogger("vllm_gateway")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "vllm-gateway"


class Gateway:
    def __init__(self, config: GatewayConfig, *, nvml: Any = None,
                 launchers: Mapping[str, Launcher] | None = None) -> None:
        self.config = config
        self.events = EventLog()
        self.metrics = Metrics()
        self.metrics.prime(config.models)
        self.started_at = time.time()
        self.accepting = False
        self.shutting_down = False
        self._nvml_module = nvml
        self._launchers_override = launchers
        self.nvml: NvmlReader | None = None
        self.gpus: list[planner.Gpu] = []
        self.session: aiohttp.ClientSession | None = None
        self.probe_session: aiohttp.ClientSession | None = None
        self._manager: Manager | None = None
        self._proxy: Proxy | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Requests being proxied, so shutdown can cancel what outlives its deadline.
        self.active: set[asyncio.Task[Any]] = set()
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

    def _open_gpus(self) -> None:
        gpus = self.config.gpus
        if gpus == "auto" or self._nvml_module is not None:
            try:
                self.nvml = NvmlReader(self._nvml_module) if self._nvml_module is not None else open_nvml()
            except GpuDiscoveryError:
                raise
            except Exception as exc:
                raise GpuDiscoveryError(f"gpus: auto: NVML failed: {exc}") from exc
        declared = list(gpus) if isinstance(gpus, tuple) else None
        self.gpus = inventory(declared, self.nvml if gpus == "auto" else None)

    def _make_launchers(self) -> dict[str, Launcher]:
        if self._launchers_override is not None:
            return dict(self._launchers_override)
        state_dir = Path(self.config.state_dir) if self.config.state_dir else default_state_dir()
        records = GroupRecords(state_dir / f"pgroups-{self.config.server.port}.json",
                               self.config.faults.stop_grace_s)
        launchers: dict[str, Launcher] = {"subprocess": SubprocessLauncher(records)}
        if any(m.launcher == "docker" for m in self.config.models.values()):
            from .launchers.docker import DockerLauncher
            launchers["docker"] = DockerLauncher(self.config.container_prefix, self.instance_id)
        return launchers

    async def start(self) -> None:
        self._open_gpus()
        pool = self.config.http_pool_size or max(
            sum(m.max_concurrent for m in self.config.models.values()), 100)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool, limit_per_host=0, ttl_dns_cache=None),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))
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
                self.events.add("-", "cleanup", f"removed leftover {what} from a previous run")
        self._manager = Manager(self.config, self.gpus, launchers, self.events, self.metrics,
                                self.probe, self.nvml)
        self._proxy = Proxy(self.session, self.config.retry, self.metrics)
        self.metrics.watch(self.status)
        self._tasks = [asyncio.create_task(self._idle_loop()),
                       asyncio.create_task(self._health_loop())]
        if any(m.pinned for m in self.config.models.values()):
            self._tasks.append(asyncio.create_task(self.manager.preload_pinned()))
        self.accepting = True
        log.info("gateway ready: %d models, GPUs %s", len(self.config.models),
                 [(g.id, g.total_gb) for g in self.gpus] or "not accounted")

    async def begin_shutdown(self) -> None:
        """Stop accepting: readiness fails and models no longer start. Requests in flight
        get ``server.shutdown_timeout_s`` to finish; the rest are then cancelled."""
        self.accepting = False
        self.shutting_down = True
        if self._manager is not None:
            self._manager.closing = True
            self._manager.changes.notify()
        self._tasks.append(asyncio.create_task(self._cancel_after_deadline()))

    async def _cancel_after_deadline(self) -> None:
        deadline = time.monotonic() + self.config.server.shutdown_timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self.active):
            task.cancel()

    async def close(self) -> None:
        self.shutting_down = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._manager is not None:
            await self._manager.shutdown()
            for launcher in self._manager.launchers.values():
                with contextlib.suppress(Exception):
                    await launcher.close()
        for session in (self.session, self.probe_session):
            if session is not None:
                await session.close()
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.close()

    async def probe(self, url: str, timeout_s: float) -> bool:
        assert self.probe_session is not None
        try:
            async with self.probe_session.get(
                    url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.manager.reap_idle()

    async def _health_loop(self) -> None:
        """Probe ready backends: a hung one is restarted, and vLLM's own gauges are read."""
        faults = self.config.faults
        while True:
            await asyncio.sleep(faults.health_interval_s)
            checks = [self._check(inst) for inst in self.manager.instances.values()
                      if inst.state is State.READY and inst.cfg.managed and not inst.draining]
            await asyncio.gather(*checks, return_exceptions=True)

    async def _check(self, inst: Instance) -> None:
        base = inst.base_url
        if base is None:
            return
        # A busy server may answer slowly; only silence for this long counts as a failed probe.
        timeout = max(2.0, min(2 * self.config.faults.health_interval_s, 10.0))
        healthy = await self.probe(base + inst.cfg.health_path, timeout)
        if healthy:
            inst.failed_probes = 0
            assert self.probe_session is not None
            inst.backend_metrics = await scrape_backend_metrics(self.probe_session, base, inst.name)
            return
        if inst.state is not State.READY:
            return
        inst.failed_probes += 1
        if inst.failed_probes >= self.config.faults.unhealthy_probes:
            self.events.add(inst.name, "unhealthy",
                            f"{inst.failed_probes} health checks failed in a row: restarting it")
            inst.failed_probes = 0
            await self.manager.unload(inst, reason="unhealthy")

    def status(self) -> dict[str, Any]:
        used = self._manager.used_gb() if self._manager is not None else {}
        driver: dict[int, float] = {}
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                driver = {r.id: round(r.used_gb, 2) for r in self.nvml.read()}
        gpus = [{"id": g.id, "vram_gb": g.total_gb, "used_gb": round(used.get(g.id, 0.0), 2),
                 "driver_used_gb": driver.get(g.id)} for g in self.gpus]
        models = ([inst.status() for inst in self._manager.instances.values()]
                  if self._manager is not None else [])
        return {"gpus": gpus, "models": models, "accepting": self.accepting,
                "uptime_s": round(time.time() - self.started_at, 1)}
