"""Helpers for running the real gateway in front of real vLLM servers.

vLLM (CPU build) is four processes per server: the api server, the resource
tracker, ``VLLM::EngineCore`` and ``VLLM::Worker``, all in the process group the
gateway creates. EngineCore and Worker rename themselves, so they are found
through the tree under the server and its process group, recorded while they
run, never by name.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from harness import GatewayProc, start_gateway
from helpers import HOST, scrape, wait_until
from procutil import group_pids
from vllm_proc import DROPPED_ENV

# Generation on a busy 2-core machine can stall for seconds, a start takes up to minutes.
HTTP_TIMEOUT_S = 300.0
GONE_TIMEOUT_S = 60.0


def server_tree(pid: int) -> list[psutil.Process]:
    """A server, its descendants and every other member of its process group, now."""
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            found[proc.pid] = proc
    except psutil.NoSuchProcess:
        pass
    # The gateway starts each server as the leader of its own group: pgid == pid.
    for member in group_pids(pid):
        try:
            found.setdefault(member, psutil.Process(member))
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def gateway_tree(gw: GatewayProc) -> list[psutil.Process]:
    """Every process below the gateway plus the groups of the servers it shows."""
    found: dict[int, psutil.Process] = {}
    try:
        for proc in psutil.Process(gw.proc.pid).children(recursive=True):
            found[proc.pid] = proc
    except psutil.NoSuchProcess:
        pass
    try:
        models = gw.status()["models"]
    except httpx.HTTPError:
        models = []
    for model in models:
        if model.get("pid"):
            for proc in server_tree(int(model["pid"])):
                found.setdefault(proc.pid, proc)
    return list(found.values())


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie holds no memory; its parent may reap it late)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(procs: Iterable[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {proc.name()!r} {proc.cmdline()[:3]}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


def wait_all_gone(procs: list[psutil.Process], what: str, timeout: float = GONE_TIMEOUT_S) -> None:
    try:
        wait_until(lambda: not any(running(p) for p in procs), timeout, interval=0.2, what=what)
    except AssertionError:
        left = [p for p in procs if running(p)]
        raise AssertionError(f"{what}: still running after {timeout} s: {describe(left)}") from None


def backend_metrics(port: int) -> str:
    """vLLM's own Prometheus text, read straight from the backend."""
    return scrape(f"http://{HOST}:{port}")


def backend_gauges(gw: GatewayProc, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = gw.model(name).get("backend")
    return found


def events(gw: GatewayProc) -> list[dict[str, Any]]:
    doc = httpx.get(gw.url + "/gateway/events", timeout=30).json()
    found: list[dict[str, Any]] = doc["events"]
    return found


@contextmanager
def serving(tmp: Path, models: dict[str, Any], **top: Any) -> Iterator[GatewayProc]:
    """The gateway in front of real vLLM servers, with the suite's settings, then stopped: what
    is still running is killed and reported (the test fails)."""
    with pytest.MonkeyPatch.context() as patch:
        # The gateway passes its environment on; these would override the stack's settings
        # (--kv-cache-memory-bytes).
        for name in DROPPED_ENV:
            patch.delenv(name, raising=False)
        gateway = start_gateway(
            tmp, models,
            # DEBUG puts every line the servers print into the gateway's log, with times.
            env={"LOG_LEVEL": "DEBUG"},
            defaults={"startup_timeout_s": 300, "request_timeout_s": 300},
            # Probes can time out while a loaded 2-core machine stalls every process for
            # seconds; a busy backend must not be restarted for that here.
            faults={"health_interval_s": 1.0, "unhealthy_probes": 10, "stop_grace_s": 30},
            **top)
    try:
        yield gateway
    finally:
        print(f"gateway log (servers' output included): {gateway.log_path}")
        procs = gateway_tree(gateway) if gateway.proc.poll() is None else []
        gateway.stop(signal.SIGTERM, timeout=120)
        _, alive = psutil.wait_procs(procs, timeout=60)
        alive = [p for p in alive if running(p)]
        for proc in alive:
            proc.kill()
        assert not alive, f"processes left behind by the gateway: {describe(alive)}"
