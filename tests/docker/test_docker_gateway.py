"""A real gateway process running ``launcher: docker`` models on a real private engine.

Each test starts its own gateway with its own VLLM_CONTAINER_PREFIX, so the
containers it sees are its own. Run:
``eval "$(scripts/docker_engine.sh start)" && .venv/bin/pytest -m docker tests/docker``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiodocker
import httpx
import openai
import pytest
from harness import GatewayProc, chat
from helpers import free_port

from vllm_gateway.launchers.docker_config import LABEL_INSTANCE, LABEL_MODEL

pytestmark = pytest.mark.docker

# The arguments vLLM's image takes, which the fake backend understands too.
SERVE_ARGS = ["--port", "{port}", "--served-model-name", "{name}", "--startup-delay", "0.5"]
DEADLINE_S = 60.0


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    state: str
    model: str | None


StartGateway = Callable[..., GatewayProc]


def docker_model(image: str, *extra_args: str, **settings: Any) -> dict[str, Any]:
    return {
        "launcher": "docker",
        "image": image,
        "args": [*SERVE_ARGS, *extra_args],
        "network": "host",
        **settings,
    }


@pytest.fixture
def start_docker_gateway(
    engine: aiodocker.Docker, gateway: StartGateway, prefix: str, fake_image: str
) -> StartGateway:
    """Start gateways whose containers carry the test's prefix.

    ``engine`` is set up before ``gateway``, so its clean-up (force-removing
    whatever carries the prefix) runs after the gateways are stopped.
    """

    def start(models: dict[str, Any], **top: Any) -> GatewayProc:
        defaults = {"startup_timeout_s": DEADLINE_S, **top.pop("defaults", {})}
        faults = {"stop_grace_s": 5, **top.pop("faults", {})}
        return gateway(
            models,
            env={"VLLM_CONTAINER_PREFIX": prefix},
            defaults=defaults,
            faults=faults,
            **top,
        )

    return start


async def containers(engine: aiodocker.Docker, prefix: str) -> list[Container]:
    """Every container whose name carries the prefix, running or not."""
    found = await engine.containers.list(all=True, filters=json.dumps({"name": [prefix]}))
    result = []
    for summary in found:
        raw: dict[str, Any] = summary._container
        labels = raw.get("Labels") or {}
        name = str((raw.get("Names") or ["?"])[0]).lstrip("/")
        result.append(Container(raw["Id"], name, raw.get("State", ""), labels.get(LABEL_MODEL)))
    return sorted(result, key=lambda c: c.name)


async def running_for(engine: aiodocker.Docker, prefix: str, model: str) -> Container:
    """The one running container of the model; fails when there is none or several."""
    mine = [c for c in await containers(engine, prefix) if c.model == model]
    assert [c.state for c in mine] == ["running"], mine
    return mine[0]


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def post_chat(gw: GatewayProc, model: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=DEADLINE_S) as client:
        return await client.post("/v1/chat/completions", json=chat(model, max_tokens=4))


async def get_json(gw: GatewayProc, path: str) -> Any:
    async with httpx.AsyncClient(base_url=gw.url, timeout=DEADLINE_S) as client:
        resp = await client.get(path)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def model_status(gw: GatewayProc, name: str) -> dict[str, Any]:
    models: list[dict[str, Any]] = (await get_json(gw, "/gateway/status"))["models"]
    return next(m for m in models if m["name"] == name)


async def wait_state(gw: GatewayProc, name: str, state: str) -> None:
    async def reached() -> bool:
        return bool((await model_status(gw, name))["state"] == state)

    await eventually(reached, f"model {name} to be {state}")


async def wait_counters_zero(gw: GatewayProc) -> None:
    async def idle() -> bool:
        models = (await get_json(gw, "/gateway/status"))["models"]
        return all(m["in_flight"] == 0 and m["queued"] == 0 for m in models)

    await eventually(idle, "in_flight and queued back to 0")


async def events_of(gw: GatewayProc) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await get_json(gw, "/gateway/events"))["events"]
    return events


async def test_starts_a_container_on_demand_and_streams_through_it(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    gw = start_docker_gateway({"tiny": docker_model(fake_image)})
    assert (await model_status(gw, "tiny"))["state"] == "stopped"
    assert await containers(engine, prefix) == []

    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        max_tokens=5,
        timeout=DEADLINE_S,
    )
    chunks = [chunk async for chunk in stream]
    await client.close()
    assert {chunk.model for chunk in chunks} == {"tiny"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()

    status = await model_status(gw, "tiny")
    assert status["state"] == "ready"
    container = await running_for(engine, prefix, "tiny")
    assert container.name == f"{prefix}_0"
    info = (await engine.containers.get(container.id))._container
    assert info["Config"]["Labels"][LABEL_INSTANCE]
    assert info["Config"]["Cmd"][:2] == ["--port", str(status["port"])]
    # What the server inside the container printed is what the gateway shows as its logs.
    logs = (await get_json(gw, "/gateway/models/tiny/logs"))["lines"]
    assert any("Application startup complete." in line for line in logs), logs

    # A second request reuses the running container.
    resp = await post_chat(gw, "tiny")
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "tiny"
    assert (await running_for(engine, prefix, "tiny")).id == container.id


async def test_swapping_two_models_on_one_gpu_removes_the_first_container(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    gw = start_docker_gateway(
        {
            "first": docker_model(fake_image, vram_gb=24),
            "second": docker_model(fake_image, vram_gb=24),
        },
        gpus=[{"id": 0, "vram_gb": 40}],
    )
    resp = await post_chat(gw, "first")
    assert resp.status_code == 200, resp.text
    first = await running_for(engine, prefix, "first")

    resp = await post_chat(gw, "second")
    assert resp.status_code == 200, resp.text
    # Memory counts as free only once the first container is gone, so by the
    # time the second one answered, the first was stopped and removed.
    assert [c.model for c in await containers(engine, prefix)] == ["second"]
    with pytest.raises(aiodocker.DockerError) as gone:
        await engine.containers.get(first.id)
    assert gone.value.status == 404
    await running_for(engine, prefix, "second")
    assert (await model_status(gw, "first"))["state"] == "stopped"
    assert (await model_status(gw, "second"))["state"] == "ready"
    assert (await get_json(gw, "/gateway/status"))["gpus"][0]["used_gb"] == 24

    kinds = [(e["model"], e["kind"]) for e in await events_of(gw)]
    assert kinds.index(("first", "stopped")) < kinds.index(("second", "starting"))


async def test_one_image_for_every_model_set_in_defaults(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    """launcher, image, args and network in ``defaults``: the models name only their size."""
    gw = start_docker_gateway(
        {"one": {"vram_gb": 10}, "two": {"vram_gb": 10}},
        defaults={"launcher": "docker", "image": fake_image, "args": SERVE_ARGS,
                  "network": "host"},
        gpus=[{"id": 0, "vram_gb": 40}],
    )
    for name in ("one", "two"):
        resp = await post_chat(gw, name)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == name
    assert sorted(c.model or "" for c in await containers(engine, prefix)) == ["one", "two"]
    for name in ("one", "two"):
        assert (await model_status(gw, name))["launcher"] == "docker"


async def test_idle_shutdown_removes_the_container(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    gw = start_docker_gateway({"sleepy": docker_model(fake_image, idle_timeout_s=1)})
    resp = await post_chat(gw, "sleepy")
    assert resp.status_code == 200, resp.text
    await running_for(engine, prefix, "sleepy")

    await wait_state(gw, "sleepy", "stopped")

    async def removed() -> bool:
        return await containers(engine, prefix) == []

    await eventually(removed, "the idle model's container to be removed")
    assert any(e["kind"] == "idle_stop" for e in await events_of(gw))


async def test_a_crashed_container_gives_502_and_the_next_request_gets_a_new_one(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    gw = start_docker_gateway({"flaky": docker_model(fake_image, "--crash-after", "2")})
    resp = await post_chat(gw, "flaky")
    assert resp.status_code == 200, resp.text
    crashing = await running_for(engine, prefix, "flaky")

    # The server exits in the middle of this request.
    resp = await post_chat(gw, "flaky")
    assert resp.status_code == 502, resp.text
    assert set(resp.json()["error"]) >= {"message", "type", "code"}
    await wait_counters_zero(gw)

    resp = await post_chat(gw, "flaky")
    assert resp.status_code == 200, resp.text
    recovered = await running_for(engine, prefix, "flaky")
    assert recovered.id != crashing.id
    assert [c.id for c in await containers(engine, prefix)] == [recovered.id]

    # Killed behind the gateway's back, with no request in flight: noticed, and
    # the next request starts yet another container.
    await engine.containers.container(recovered.id).kill()
    await wait_state(gw, "flaky", "failed")
    resp = await post_chat(gw, "flaky")
    assert resp.status_code == 200, resp.text
    third = await running_for(engine, prefix, "flaky")
    assert third.id not in (crashing.id, recovered.id)
    assert [c.id for c in await containers(engine, prefix)] == [third.id]
    assert sum(e["kind"] == "crashed" for e in await events_of(gw)) == 2
    await wait_counters_zero(gw)


async def test_leftover_labelled_containers_are_removed_when_the_gateway_starts(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    labels = {LABEL_INSTANCE: "an-earlier-run", LABEL_MODEL: "tiny"}
    config: dict[str, Any] = {
        "Image": fake_image,
        "Cmd": ["--port", str(free_port()), "--served-model-name", "tiny"],
        "Labels": labels,
        "HostConfig": {"NetworkMode": "none", "Init": True},
    }
    leftover = await engine.containers.create(config, name=f"{prefix}_3")
    await leftover.start()
    stray_labels = {**labels, LABEL_MODEL: "stray"}
    stray = await engine.containers.create(
        {**config, "Labels": stray_labels}, name=f"{prefix}-stray"
    )
    await stray.start()

    gw = start_docker_gateway({"tiny": docker_model(fake_image)})

    names = [c.name for c in await containers(engine, prefix)]
    assert names == [f"{prefix}-stray"]
    assert (await engine.containers.get(f"{prefix}-stray"))._container["State"]["Running"]
    cleanups = [e["message"] for e in await events_of(gw) if e["kind"] == "cleanup"]
    assert len(cleanups) == 1 and f"{prefix}_3" in cleanups[0], cleanups

    # The badly named container is no obstacle to serving.
    resp = await post_chat(gw, "tiny")
    assert resp.status_code == 200, resp.text
    assert (await running_for(engine, prefix, "tiny")).name == f"{prefix}_0"


async def test_gpu_requests_carry_the_placed_gpu_ids(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    utilization = ("--gpu-memory-utilization", "{gpu_memory_utilization}")
    gw = start_docker_gateway(
        {
            "left": docker_model(fake_image, *utilization, vram_gb=30),
            "right": docker_model(fake_image, *utilization, vram_gb=30),
            "wide": docker_model(fake_image, *utilization, vram_gb=10, gpu_count=2),
        },
        gpus=[{"id": 0, "vram_gb": 40}, {"id": 1, "vram_gb": 40}],
    )
    for name in ("left", "right", "wide"):
        resp = await post_chat(gw, name)
        assert resp.status_code == 200, resp.text

    placed = {name: (await model_status(gw, name))["gpus"] for name in ("left", "right", "wide")}
    assert sorted(placed["left"] + placed["right"]) == [0, 1]
    assert sorted(placed["wide"]) == [0, 1]
    for name, fraction in (("left", "0.75"), ("right", "0.75"), ("wide", "0.25")):
        container = await running_for(engine, prefix, name)
        info = (await engine.containers.get(container.id))._container
        [request] = info["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == [str(g) for g in placed[name]], name
        assert request["Capabilities"] == [["gpu"]]
        assert info["Config"]["Cmd"][-2:] == ["--gpu-memory-utilization", fraction]
        # The device request hides the other GPUs; host ids would be wrong inside.
        assert not any(v.startswith("CUDA_VISIBLE_DEVICES=") for v in info["Config"]["Env"])


async def test_sigterm_to_the_gateway_leaves_no_container(
    start_docker_gateway: StartGateway, fake_image: str, engine: aiodocker.Docker, prefix: str
) -> None:
    gw = start_docker_gateway({"one": docker_model(fake_image), "two": docker_model(fake_image)})
    results = await asyncio.gather(post_chat(gw, "one"), post_chat(gw, "two"))
    assert [r.status_code for r in results] == [200, 200]
    assert len(await containers(engine, prefix)) == 2

    assert await asyncio.to_thread(gw.stop, signal.SIGTERM) == 0
    assert await containers(engine, prefix) == []
