"""An in-memory launcher for tests of the manager: no processes, every step controllable."""

from __future__ import annotations

import asyncio

from .base import LaunchError, LaunchSpec, LogBuffer


class FakeHandle:
    def __init__(self, spec: LaunchSpec, pid: int) -> None:
        self.spec = spec
        self._pid = pid
        self._logs = LogBuffer()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.healthy = False
        self.stop_calls = 0
        self.stop_gate: asyncio.Event | None = None  # set by a test to hold stop() open

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    @property
    def logs(self) -> LogBuffer:
        return self._logs

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    def alive(self) -> bool:
        return not self._exit.done()

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exit)

    def crash(self, code: int = 1, line: str = "") -> None:
        if line:
            self._logs.append(line)
        if not self._exit.done():
            self._exit.set_result(code)

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
