"""An in-memory launcher for tests of the manager: no processes, every step controllable."""

from __future__ import annotations

import asyncio

from .base import LaunchError, LaunchSpec, LocalServer


class FakeHandle(LocalServer):
    def __init__(self, spec: LaunchSpec, pid: int) -> None:
        super().__init__(spec.port)
        self.spec = spec
        self._pid = pid
        self.healthy = False
        self.stop_calls = 0
        self.stop_gate: asyncio.Event | None = None  # set by a test to hold stop() open

    @property
    def pid(self) -> int:
        return self._pid

    def crash(self, code: int = 1, line: str = "") -> None:
        if line:
            self._logs.append(line)
        self._exited_with(code)

    async def stop(self, grace_s: float) -> None:
        self.stop_calls += 1
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.crash(0)


class FakeLauncher:
    """Starts FakeHandles; ``auto_healthy`` makes them answer health at once."""

    def __init__(self, auto_healthy: bool = True) -> None:
        self.auto_healthy = auto_healthy
        self.handles: list[FakeHandle] = []
        self.fail_with: str | None = None
        self._next_pid = 1000

    async def start(self, spec: LaunchSpec) -> FakeHandle:
        if self.fail_with is not None:
            raise LaunchError(self.fail_with)
        self._next_pid += 1
        handle = FakeHandle(spec, self._next_pid)
        handle.healthy = self.auto_healthy
        self.handles.append(handle)
        return handle

    def by_name(self, name: str) -> list[FakeHandle]:
        return [h for h in self.handles if h.spec.model.name == name]

    async def probe(self, url: str, timeout_s: float) -> bool:
        """A health probe that asks the fake handles instead of the network."""
        for handle in self.handles:
            if url.startswith(handle.base_url) and handle.alive():
                return handle.healthy
        return False

    async def cleanup_leftovers(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None
