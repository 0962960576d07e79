"""The node agent: one Ray actor per node of the cluster, which runs that node's model servers.

It runs on the node (Ray imports this module there by name, so each node's Python needs
vllm-gateway installed, at the gateway's version). The gateway owns it (it is not detached):
when the gateway's driver goes, Ray kills the agent, its raylet SIGKILLs the keepers, and
each server gets its keeper's parent-death signal (see ``ray_keeper``).

Why one agent per node instead of one actor per model: a new actor needs a new Ray worker
process, which took 1.2–2 s here, on every cold start. The agent is created once, when its
node joins, and a start is then one call. Nothing here imports Ray at module level.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..handles import LogBuffer
from .subprocess import ProcessHandle

# The keeper runs as `python -S -c SOURCE`: stdlib only, so no site packages to scan on the
# way to a cold start.
KEEPER_SOURCE = Path(__file__).with_name("ray_keeper.py").read_text()
LOG_LINES = 1000
_PR_SET_PDEATHSIG = 1
_GIB = 1024**3


def _die_with_agent() -> None:
    # SIGKILL: the keeper ignores SIGTERM by design; its server then gets SIGTERM.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


def nvml_totals_gb() -> list[float] | None:
    """Total memory of each GPU the NVIDIA driver of this node reports; None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: the caller falls back
        return None
    try:
        return [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total / _GIB
                for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


class _Server:
    """One running server: its handle and its output, numbered for readers that poll."""

    def __init__(self, handle: ProcessHandle, logs: LogBuffer) -> None:
        self.handle = handle
        self.seq = 0
        self.lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=LOG_LINES)
        self.changed = asyncio.Event()
        logs.subscribe(self._on_line)

    def _on_line(self, line: str) -> None:
        self.seq += 1
        self.lines.append((self.seq, line))
        self.changed.set()


class NodeAgent:
    """Ray calls these methods from the gateway; all run on the agent's one event loop, the
    thread that forks every keeper (the parent-death signal is tied to that thread)."""

    def __init__(self) -> None:
        self._servers: dict[str, _Server] = {}

    async def info(self) -> dict[str, Any]:
        import ray

        return {"ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "nvml_gb": nvml_totals_gb()}

    async def start(self, key: str, argv: list[str], env: Mapping[str, str], port: int,
                    name: str) -> dict[str, Any]:
        """Start ``argv`` (``{port}`` still in it) under a keeper; the port the gateway picked
        if it is free on this node too, else one that is."""
        import ray

        if key in self._servers:
            raise RuntimeError(f"server {key} already runs on this node")
        if not port_is_free(port):
            port = free_port()
        command = [arg.replace("{port}", str(port)) for arg in argv]
        full_env = {**os.environ, **env}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            popen = subprocess.Popen(  # noqa: ASYNC220 - a quick fork, on the loop's thread
                [sys.executable, "-S", "-c", KEEPER_SOURCE, *command], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                start_new_session=True, preexec_fn=_die_with_agent)  # noqa: PLW1509
        except OSError as exc:
            raise RuntimeError(f"cannot start the keeper for {command[0]!r}: {exc}") from exc
        logs = LogBuffer(LOG_LINES)
        server = _Server(ProcessHandle(popen, port, logs, None, name), logs)
        self._servers[key] = server
        return {"host": ray.util.get_node_ip_address(), "port": port, "pid": popen.pid}

    async def wait_exit(self, key: str) -> int:
        server = self._servers.get(key)
        if server is None:
            return -1
        code = await server.handle.wait_exit()
        server.changed.set()
        return code

    async def logs_after(self, key: str, seq: int, timeout_s: float
                         ) -> tuple[int, list[str], bool]:
        """Lines after ``seq`` (waiting up to ``timeout_s`` for one), the last seq, and
        whether the server is gone (no more lines will come)."""
        server = self._servers.get(key)
        if server is None:
            return seq, [], True
        if server.seq <= seq and server.handle.alive():
            server.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.changed.wait(), timeout_s)
        lines = [line for n, line in server.lines if n > seq]
        return server.seq, lines, not lines and not server.handle.alive()

    async def stop(self, key: str, grace_s: float) -> int | None:
        """SIGTERM the server's whole group, SIGKILL after ``grace_s``; return once no process
        of it is left, with its exit code."""
        server = self._servers.pop(key, None)
        if server is None:
            return None
        await server.handle.stop(grace_s)
        return server.handle.returncode

    async def stop_all(self, grace_s: float) -> int:
        keys = list(self._servers)
        await asyncio.gather(*(self.stop(key, grace_s) for key in keys))
        return len(keys)
