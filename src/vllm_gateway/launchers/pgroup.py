"""Stopping a process group: the one terminator every launcher and clean-up uses.

SIGTERM to the whole group, then SIGKILL once ``grace_s`` has passed, and
return only when no live member is left, so the memory the server held is
really free. Signalling the leader alone is not enough: vLLM's engine and
worker processes outlive a SIGKILLed api server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

import psutil

log = logging.getLogger("vllm_gateway.launcher")

KILL_WAIT_S = 30.0


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _gone(pgid: int, timeout: float, reap: Callable[[], object]) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while True:
        reap()  # a leader that is our child must be reaped, or it lingers as a zombie
        if not group_members(pgid):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def terminate_group(pgid: int, grace_s: float, *, reap: Callable[[], object] = lambda: None,
                          name: str = "") -> bool:
    """SIGTERM, SIGKILL after ``grace_s``; True once every member is gone."""
    if grace_s > 0:
        _signal(pgid, signal.SIGTERM)
        if await _gone(pgid, grace_s, reap):
            return True
        log.warning("[%s] still running %.1f s after SIGTERM: SIGKILL", name or pgid, grace_s)
    _signal(pgid, signal.SIGKILL)
    return await _gone(pgid, KILL_WAIT_S, reap)


def terminate_group_blocking(pgid: int, grace_s: float, name: str = "") -> bool:
    """The same, for code that runs in a worker thread (the start-up sweep of leftovers)."""
    return asyncio.run(terminate_group(pgid, grace_s, name=name))
