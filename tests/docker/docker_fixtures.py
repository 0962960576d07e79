"""Fixtures for the Docker launcher's tests against a real (private) engine.

Tests marked ``docker`` need an engine at DOCKER_HOST: start one with
``eval "$(scripts/docker_engine.sh start)"``. Without it they are skipped with
that hint, unless DOCKER_TESTS_REQUIRED=1 (as on CI): then a missing engine
fails them, since a CI run that skipped the whole suite would look green.
The fake-backend image is built (or found up to date) once per run by
scripts/build_fake_image.sh; nothing is ever pulled.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import aiodocker
import pytest

from vllm_gateway.launchers.docker import DockerLauncher

ROOT = Path(__file__).resolve().parents[2]
FAKE_IMAGE = "vllm-gateway/fake-backend:test"
NO_ENGINE = "no Docker engine: run scripts/docker_engine.sh start"


def _engine_answers(docker_host: str) -> bool:
    """GET /_ping on the engine, with a short bound: it answers "OK" when up."""
    url = urlparse(docker_host)
    request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
    try:
        if url.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(3.0)
            sock.connect(url.path)
        elif url.scheme in ("tcp", "http"):
            sock = socket.create_connection((url.hostname or "", url.port or 2375), timeout=3.0)
        else:
            return False
        with sock:
            sock.sendall(request)
            status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.split(b" ")[1:2] == [b"200"]


def _no_engine(reason: str) -> NoReturn:
    if os.environ.get("DOCKER_TESTS_REQUIRED") == "1":
        pytest.fail(f"{reason} (DOCKER_TESTS_REQUIRED=1: an engine is required)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_host() -> str:
    host = os.environ.get("DOCKER_HOST")
    if not host:
        _no_engine(f"{NO_ENGINE} (and export the DOCKER_HOST it prints)")
    if not _engine_answers(host):
        _no_engine(f"{NO_ENGINE}: nothing answers at DOCKER_HOST={host}")
    return host


@pytest.fixture(scope="session")
def fake_image(docker_host: str) -> str:
    """The fake-backend image, built from this checkout when missing or stale."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "build_fake_image.sh")],
        env={**os.environ, "DOCKER_HOST": docker_host},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"building {FAKE_IMAGE} failed:\n{done.stderr}{done.stdout}")
    return FAKE_IMAGE


@pytest.fixture
def prefix() -> str:
    """A container-name prefix of this test alone, so tests never see each other's containers."""
    return f"vgwtest{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def engine(docker_host: str, prefix: str) -> AsyncIterator[aiodocker.Docker]:
    """A raw engine client for looking behind the launcher's back.

    On the way out it force-removes every container whose name starts with the
    test's prefix, whatever the launcher did, so a failing test leaves nothing.
    """
    client = aiodocker.Docker(url=docker_host)
    try:
        yield client
    finally:
        filters = json.dumps({"name": [prefix]})
        for container in await client.containers.list(all=True, filters=filters):
            try:
                await container.delete(force=True, v=True)
            except aiodocker.DockerError:
                pass
        await client.close()


@pytest.fixture
async def make_launcher(
    docker_host: str, prefix: str, engine: aiodocker.Docker
) -> AsyncIterator[Callable[..., DockerLauncher]]:
    """Build DockerLaunchers on the test's prefix; all are closed afterwards."""
    made: list[DockerLauncher] = []

    def make(instance_id: str = "test-instance") -> DockerLauncher:
        launcher = DockerLauncher(prefix, instance_id, docker_host=docker_host)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        await launcher.close()


@pytest.fixture
async def launcher(make_launcher: Callable[..., DockerLauncher]) -> DockerLauncher:
    return make_launcher()
