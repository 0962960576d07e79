"""Fixtures of the ``ray`` suite: a real local Ray cluster of several nodes, gateways on it.

Skipped with a hint when Ray is not installed (scripts/ci_ray.sh installs .venv-ray and runs
the suite from it), unless RAY_TESTS_REQUIRED=1 (as on CI): then a missing Ray fails, since
a CI run that skipped the whole suite would look green.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import GatewayProc, fake_command, start_gateway

NO_RAY = "Ray is not installed in this venv: run scripts/ci_ray.sh (it builds .venv-ray)"
GPU_GB = 24.0
MARK = "VLLM_GATEWAY_RAY_SUITE"


def _need_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("RAY_TESTS_REQUIRED") == "1":
            pytest.fail(f"{NO_RAY} (RAY_TESTS_REQUIRED=1: Ray is required)")
        pytest.skip(NO_RAY)


@pytest.fixture(scope="module")
def ray_cluster_factory() -> Iterator[Callable[[list[int]], Any]]:
    """Start clusters (a head without GPUs plus nodes with the given GPU counts); every one
    is stopped when the module ends."""
    _need_ray()
    from cluster import LocalCluster, start_cluster

    started: list[LocalCluster] = []

    def make(gpus_per_node: list[int]) -> LocalCluster:
        cluster = start_cluster(gpus_per_node)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_cluster(ray_cluster_factory: Callable[[list[int]], Any]) -> Any:
    """One cluster for the tests that leave it as they found it: a head, a node with one GPU
    and a node with two."""
    return ray_cluster_factory([1, 2])


def backend_processes(mark: str) -> list[psutil.Process]:
    """Fake backends (and their workers) started for one test, wherever Ray ran them."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARK) == mark and "fake_vllm" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def ray_model(mark: str, vram_gb: float, gpu_count: int = 1, **extra: Any) -> dict[str, Any]:
    """A model served by the fake backend on a Ray node (listening on the node's address)."""
    return {"launcher": "ray", "command": fake_command("--host", "0.0.0.0"),
            "vram_gb": vram_gb, "gpu_count": gpu_count, "env": {MARK: mark},
            "startup_timeout_s": 60, **extra}


@pytest.fixture
def mark() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def ray_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    """A gateway on a cluster (``gpus: ray``); stopped with SIGTERM afterwards."""
    started: list[GatewayProc] = []

    def start(address: str, models: dict[str, Any], **kwargs: Any) -> GatewayProc:
        kwargs.setdefault("gpus", "ray")
        kwargs.setdefault("ray", {"address": "auto", "gpu_vram_gb": GPU_GB})
        env = {"RAY_ADDRESS": address, **kwargs.pop("env", {})}
        gw = start_gateway(tmp_path, models, env=env, **kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
