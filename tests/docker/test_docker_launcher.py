"""The Docker launcher against a real private engine and the fake-backend image.

Run: ``eval "$(scripts/docker_engine.sh start)" && .venv/bin/pytest -m docker tests/docker``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, cast

import aiodocker
import aiohttp
import pytest
from helpers import free_port
from procutil import port_open

from vllm_gateway.config import DockerSpec, ModelConfig
from vllm_gateway.config.schema import NetworkMode
from vllm_gateway.launchers.base import LaunchError, LaunchSpec
from vllm_gateway.launchers.docker import ContainerHandle, DockerLauncher
from vllm_gateway.launchers.docker_config import LABEL_INSTANCE, LABEL_MODEL

pytestmark = pytest.mark.docker

# The arguments vLLM's image takes, which the fake backend understands too.
SERVE_ARGS = ("--port", "{port}", "--served-model-name", "{name}", "--startup-delay", "0")
START_TIMEOUT_S = 60.0


def launch_spec(
    image: str,
    *,
    name: str = "tiny",
    gpu_ids: tuple[int, ...] = (),
    args: tuple[str, ...] = SERVE_ARGS,
    network: str = "host",
    env: dict[str, str] | None = None,
) -> LaunchSpec:
    # Config accepts host and bridge; the launcher takes any network name, and one test
    # brings a network of its own.
    docker = DockerSpec(image=image, args=args, network=cast(NetworkMode, network), shm_size="64m")
    model = ModelConfig(name=name, launcher="docker", docker=docker, env=env or {})
    return LaunchSpec(model=model, port=free_port(), gpu_ids=gpu_ids, gpu_memory_utilization=0.9)


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_healthy(handle: ContainerHandle) -> None:
    """Poll /health until 200; fail at once, with its logs, if the container exited."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            if not handle.alive():
                logs = "\n".join(handle.logs.tail(30))
                pytest.fail(f"container exited with {handle.returncode}:\n{logs}")
            try:
                async with session.get(f"{handle.base_url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{handle.base_url}/health not 200 after {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)


async def stream_chat(base_url: str, model: str) -> list[Any]:
    """A streamed chat completion; the SSE data payloads in order ("[DONE]" as a str)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "max_tokens": 4,
    }
    events: list[Any] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{base_url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def container_exists(engine: aiodocker.Docker, name: str) -> bool:
    try:
        await engine.containers.get(name)
    except aiodocker.DockerError as exc:
        assert exc.status == 404, exc
        return False
    return True


async def test_container_serves_streams_logs_and_stops(
    launcher: DockerLauncher, fake_image: str, engine: aiodocker.Docker
) -> None:
    spec = launch_spec(fake_image)
    handle = await launcher.start(spec)

    assert handle.base_url == f"http://127.0.0.1:{spec.port}"
    assert handle.alive() and handle.returncode is None
    assert isinstance(handle.pid, int) and handle.pid > 0
    await wait_healthy(handle)

    events = await stream_chat(handle.base_url, "tiny")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {chunk["model"] for chunk in chunks} == {"tiny"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()

    # What the server printed is in the handle's logs, line by line.
    await eventually(
        lambda: "INFO:     Application startup complete." in handle.logs.tail(200),
        "the server's start-up lines in the handle's logs",
    )

    started = time.monotonic()
    await handle.stop(grace_s=20.0)
    # Well under the grace period: SIGTERM reached the server, no SIGKILL was needed.
    assert time.monotonic() - started < 10.0
    assert not handle.alive()
    assert handle.returncode == 0
    assert not await container_exists(engine, handle.name)
    assert not port_open(spec.port)


async def test_gpu_request_env_and_labels_reach_the_engine(
    launcher: DockerLauncher, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    spec = launch_spec(fake_image, name="big", gpu_ids=(0, 1), env={"HF_HUB_OFFLINE": "1"})
    handle = await launcher.start(spec)
    try:
        assert handle.name == f"{prefix}_0"
        info = (await engine.containers.get(handle.name))._container
        [request] = info["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == ["0", "1"]
        assert request["Capabilities"] == [["gpu"]]
        assert info["HostConfig"]["NetworkMode"] == "host"
        assert info["HostConfig"]["ShmSize"] == 64 * 1024 * 1024
        assert info["Config"]["Labels"][LABEL_INSTANCE] == "test-instance"
        assert info["Config"]["Labels"][LABEL_MODEL] == "big"
        env = info["Config"]["Env"]
        assert "HF_HUB_OFFLINE=1" in env
        assert not any(item.startswith("CUDA_VISIBLE_DEVICES=") for item in env)
        assert info["Config"]["Cmd"][:4] == ["--port", str(spec.port), "--served-model-name", "big"]
        # The engine accepted the request and the server runs.
        await wait_healthy(handle)
    finally:
        await handle.stop(grace_s=10.0)


async def test_names_take_the_lowest_free_slot(
    launcher: DockerLauncher, fake_image: str, prefix: str
) -> None:
    first = await launcher.start(launch_spec(fake_image, name="a"))
    second = await launcher.start(launch_spec(fake_image, name="b"))
    assert (first.name, second.name) == (f"{prefix}_0", f"{prefix}_1")
    await first.stop(grace_s=10.0)
    third = await launcher.start(launch_spec(fake_image, name="c"))
    assert third.name == f"{prefix}_0"
    await asyncio.gather(second.stop(grace_s=10.0), third.stop(grace_s=10.0))


async def test_a_server_that_exits_is_seen_with_its_last_words(
    launcher: DockerLauncher, fake_image: str, engine: aiodocker.Docker
) -> None:
    last_line = "RuntimeError: the fake model failed to load"
    spec = launch_spec(fake_image, args=(*SERVE_ARGS, "--fail-start", last_line))
    handle = await launcher.start(spec)

    code = await asyncio.wait_for(handle.wait_exit(), START_TIMEOUT_S)
    assert code == 1
    assert handle.returncode == 1 and not handle.alive()
    await eventually(lambda: last_line in handle.logs.tail(50), "the failure line in the logs")

    await handle.stop(grace_s=5.0)
    assert not await container_exists(engine, handle.name)


async def test_cleanup_removes_labelled_leftovers_and_ignores_other_names(
    make_launcher: Callable[..., DockerLauncher],
    fake_image: str,
    engine: aiodocker.Docker,
    prefix: str,
) -> None:
    # A gateway that went away without stopping its server.
    earlier = make_launcher("earlier-run")
    spec = launch_spec(fake_image)
    running = await earlier.start(spec)
    await wait_healthy(running)
    await earlier.close()

    labels = {LABEL_INSTANCE: "another-run", LABEL_MODEL: "leftover"}
    config: dict[str, Any] = {
        "Image": fake_image,
        "Cmd": ["--port", "1"],
        "HostConfig": {"NetworkMode": "none"},
    }
    await engine.containers.create({**config, "Labels": labels}, name=f"{prefix}_7")
    for odd in (f"{prefix}-odd", f"{prefix}_x", f"{prefix}_7_copy"):
        await engine.containers.create({**config, "Labels": labels}, name=odd)
    await engine.containers.create(config, name=f"{prefix}_8")  # no gateway label

    removed = await make_launcher("this-run").cleanup_leftovers()

    assert sorted(removed) == sorted([running.name, f"{prefix}_7"])
    for gone in removed:
        assert not await container_exists(engine, gone)
    for kept in (f"{prefix}-odd", f"{prefix}_x", f"{prefix}_7_copy", f"{prefix}_8"):
        assert await container_exists(engine, kept), kept
    await eventually(lambda: not port_open(spec.port), "the leftover server's port to close")


async def test_missing_image_is_a_clear_error_and_leaves_nothing(
    launcher: DockerLauncher, engine: aiodocker.Docker, prefix: str, docker_host: str
) -> None:
    image = "vllm-gateway/absent:never-built"
    with pytest.raises(LaunchError) as caught:
        await launcher.start(launch_spec(image))
    message = str(caught.value)
    assert f"image {image} not found locally" in message
    assert f"docker pull {image}" in message
    assert docker_host in message
    left = await engine.containers.list(all=True, filters=json.dumps({"name": [prefix]}))
    assert left == []


async def test_bridge_network_publishes_the_port_on_loopback(
    launcher: DockerLauncher, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    # The engine runs with --bridge=none; a network of the test's own stands in.
    network = await engine.networks.create({"Name": f"{prefix}-net", "Driver": "bridge"})
    try:
        args = ("--host", "0.0.0.0", "--port", "8000", "--served-model-name", "{name}")
        spec = launch_spec(fake_image, args=args, network=f"{prefix}-net")
        handle = await launcher.start(spec)
        try:
            info = (await engine.containers.get(handle.name))._container
            bindings = info["HostConfig"]["PortBindings"]
            assert bindings == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]}
            await wait_healthy(handle)
            events = await stream_chat(handle.base_url, "tiny")
            assert events[-1] == "[DONE]"
        finally:
            await handle.stop(grace_s=10.0)
    finally:
        await network.delete()
