"""Process and port helpers shared by the tests that start real servers.

Start servers with ``start_new_session=True`` so that their PID is also their
process group id: :func:`kill_group` and :func:`group_pids` take that id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import psutil
from helpers import HOST


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts connections on the port right now."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


async def wait_port(
    port: int,
    timeout: float,
    host: str = HOST,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll until the port accepts connections; TimeoutError after ``timeout`` s.

    ``alive`` (e.g. ``lambda: proc.poll() is None``) fails fast with RuntimeError
    when the server died instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            pass
        else:
            writer.close()
            await writer.wait_closed()
            return
        if alive is not None and not alive():
            raise RuntimeError(f"the server for port {port} exited before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} not open after {timeout} s")
        await asyncio.sleep(0.02)


def wait_port_blocking(
    port: int,
    timeout: float,
    host: str = HOST,
    alive: Callable[[], bool] | None = None,
) -> None:
    """:func:`wait_port` for synchronous fixtures."""
    deadline = time.monotonic() + timeout
    while not port_open(port, host):
        if alive is not None and not alive():
            raise RuntimeError(f"the server for port {port} exited before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} not open after {timeout} s")
        time.sleep(0.02)


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group; zombies are left out (they hold nothing)."""
    found: list[int] = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return sorted(found)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the whole group led by ``pid``; a group already gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def wait_group_gone(pgid: int, timeout: float) -> None:
    """Poll until :func:`group_pids` is empty; TimeoutError lists who is left."""
    deadline = time.monotonic() + timeout
    while left := group_pids(pgid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process group {pgid} still has {left} after {timeout} s")
        await asyncio.sleep(0.02)


def fake_backend_cmd(port: int, name: str = "fake", *extra: str) -> list[str]:
    """The command line of the packaged fake vLLM backend."""
    return [
        sys.executable,
        "-m",
        "fake_vllm",
        "--port",
        str(port),
        "--served-model-name",
        name,
        *extra,
    ]
