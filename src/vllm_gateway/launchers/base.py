"""The seam between the gateway and whatever runs a model server.

A launcher turns a :class:`LaunchSpec` into a running server and gives back a
:class:`ServerHandle`. The gateway never touches processes or containers
directly: the subprocess launcher, the Docker launcher and test fakes all
implement these two small interfaces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ModelConfig
from ..handles import LogBuffer, ServerHandle

__all__ = ["LaunchError", "LaunchSpec", "Launcher", "LocalServer", "LogBuffer", "ServerHandle"]


@dataclass(frozen=True)
class LaunchSpec:
    model: ModelConfig
    port: int
    gpu_ids: tuple[int, ...]
    # vram_gb over the chosen GPU's total, rounded down to 2 decimals; 0.9 without GPUs.
    gpu_memory_utilization: float
    # Extra environment for the server (CUDA_VISIBLE_DEVICES is set by the launcher).
    env: Mapping[str, str] = field(default_factory=dict)

    def placeholders(self) -> dict[str, str]:
        return {
            "port": str(self.port),
            "name": self.model.name,
            "gpu_ids": ",".join(str(g) for g in self.gpu_ids),
            "gpu_memory_utilization": f"{self.gpu_memory_utilization:.2f}",
            "max_loras": str(self.model.max_adapters),
            "max_lora_rank": str(self.model.max_lora_rank),
        }


class LocalServer:
    """What every handle shares: a server on a loopback port, its output, and its exit.

    Subclasses set the exit code with :meth:`_exited_with` once their process or container
    is gone, and implement ``pid`` and ``stop``.
    """

    def __init__(self, port: int, logs: LogBuffer | None = None) -> None:
        self._port = port
        self._logs = logs if logs is not None else LogBuffer()
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def logs(self) -> LogBuffer:
        return self._logs

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def alive(self) -> bool:
        return not self._exited.done()

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exited)

    def _exited_with(self, code: int) -> None:
        if not self._exited.done():
            self._exited.set_result(code)


class LaunchError(Exception):
    """The server could not be started at all (bad command, missing image...)."""


class Launcher(Protocol):
    async def start(self, spec: LaunchSpec) -> ServerHandle:
        """Start the server; raise LaunchError when it cannot even be started."""

    async def cleanup_leftovers(self) -> list[str]:
        """Remove servers a previous run of this gateway left behind; say which."""

    async def close(self) -> None: ...
