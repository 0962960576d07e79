"""LoRA adapters loaded into one base model's running server.

vLLM's ``--max-loras`` bounds the adapters in one batch, not the adapters
loaded through its API, so the bound on loaded adapters (``max_adapters``) is
the gateway's own, kept by unloading the least recently used adapter that has
no request in flight. Concurrent first requests for an adapter load it once.
A server that restarts comes back with no adapters: the set follows the
server handle and starts empty for a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..config import AdapterConfig
from ..errors import BackendUnavailable
from ..handles import ServerHandle
from .clock import Clock
from .instance import Instance
from .lora_api import LoraControl, LoraError

log = logging.getLogger("vllm_gateway.adapters")


@dataclass
class LoadedAdapter:
    name: str
    last_used: float  # monotonic, for LRU order
    last_used_wall: float
    in_flight: int = 0


class Adapters:
    def __init__(self, base: Instance, control: LoraControl, clock: Clock) -> None:
        self.base = base
        self.control = control
        self.clock = clock
        self.loaded: dict[str, LoadedAdapter] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._server: ServerHandle | None = None

    def _follow_server(self) -> None:
        server = self.base.handle
        if server is not None and not server.alive():
            server = None  # a stopped server keeps its handle, not its adapters
        if server is not self._server:
            self._server = server
            self.loaded.clear()
            self._loading.clear()

    @asynccontextmanager
    async def using(self, adapter: AdapterConfig) -> AsyncIterator[LoadedAdapter]:
        """Make sure the adapter is loaded in the running base and count a request on it."""
        self._follow_server()
        entry = self.loaded.get(adapter.name)
        if entry is None:
            task = self._loading.get(adapter.name)
            if task is None:
                task = asyncio.create_task(self._load(adapter))
                self._loading[adapter.name] = task
            try:
                await asyncio.shield(task)
            except LoraError as exc:
                raise BackendUnavailable(
                    f"adapter {adapter.name} could not be loaded into {self.base.name}: {exc}"
                ) from None
            entry = self.loaded.get(adapter.name)
            if entry is None:
                raise BackendUnavailable(f"model {self.base.name} restarted while adapter "
                                         f"{adapter.name} was loading; try again")
        entry.in_flight += 1
        try:
            yield entry
        finally:
            entry.in_flight -= 1
            entry.last_used, entry.last_used_wall = self.clock.now(), self.clock.wall()
            self.base.changes.notify()

    async def _load(self, adapter: AdapterConfig) -> None:
        server = self._server
        try:
            while len(self.loaded) + len(self._loading) > self.base.cfg.max_adapters:
                idle = [a for a in self.loaded.values() if a.in_flight == 0]
                if not idle:
                    await self.base.changes.wait(1.0)  # every adapter busy: wait for one
                    continue
                victim = min(idle, key=lambda a: (a.last_used, a.name))
                del self.loaded[victim.name]
                await self._unload(victim.name)
            base_url = self.base.base_url
            if base_url is None:
                raise LoraError(f"model {self.base.name} is not running")
            await self.control.load(base_url, adapter.name, adapter.path)
            if self._server is server:
                self.loaded[adapter.name] = LoadedAdapter(adapter.name, self.clock.now(),
                                                          self.clock.wall())
        finally:
            if self._loading.get(adapter.name) is asyncio.current_task():
                del self._loading[adapter.name]

    async def _unload(self, name: str) -> None:
        base_url = self.base.base_url
        if base_url is None:
            return
        try:
            await self.control.unload(base_url, name)
        except LoraError as exc:
            log.warning("model %s: unloading adapter %s failed: %s", self.base.name, name, exc)

    async def unload(self, name: str) -> bool:
        """Unload now if loaded and idle; False when it has requests in flight."""
        self._follow_server()
        entry = self.loaded.get(name)
        if entry is None:
            return True
        if entry.in_flight:
            return False
        del self.loaded[name]
        await self._unload(name)
        return True

    def status(self) -> list[dict[str, object]]:
        self._follow_server()
        return [{"name": a.name, "last_used": a.last_used_wall, "in_flight": a.in_flight}
                for a in sorted(self.loaded.values(), key=lambda a: a.name)]
