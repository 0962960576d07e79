"""Each model's request rate and p95 latency over the last hour (status ``recent``)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from vllm_gateway.config import GatewayConfig, ModelConfig
from vllm_gateway.metrics import RecentRequests
from vllm_gateway.web.app import create_app


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_no_requests_is_a_rate_of_zero_and_no_p95() -> None:
    assert RecentRequests(Clock()).summary("m") == {"requests_per_min": 0.0, "p95_s": None}


def test_rate_and_p95_over_the_time_seen() -> None:
    clock = Clock()
    recent = RecentRequests(clock)
    for i in range(1, 101):
        recent.add("m", i / 100)
    recent.add("other", 9.0)
    clock.t += 600  # up for ten minutes: the rate is over those, not over a whole hour
    assert recent.summary("m") == {"requests_per_min": 10.0, "p95_s": 0.95}
    assert recent.summary("other") == {"requests_per_min": 0.1, "p95_s": 9.0}


def test_requests_older_than_the_hour_drop_out() -> None:
    clock = Clock()
    recent = RecentRequests(clock)
    recent.add("m", 30.0)  # a slow one, early
    clock.t += 3000
    for _ in range(60):
        recent.add("m", 0.5)
    clock.t += 601
    assert recent.summary("m") == {"requests_per_min": 1.0, "p95_s": 0.5}


def test_a_full_window_rates_over_the_span_it_covers() -> None:
    clock = Clock()
    recent = RecentRequests(clock, maxlen=10)
    clock.t += 3000
    for _ in range(50):  # 50 requests in two minutes; only the last 10 are kept
        recent.add("m", 1.0)
        clock.t += 120 / 50
    got = recent.summary("m")
    assert 20 < got["requests_per_min"] <= 25  # type: ignore[operator]
    assert got["p95_s"] == 1.0


async def test_the_status_document_carries_each_models_recent_requests() -> None:
    async def completion(_: web.Request) -> web.Response:
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    backend = web.Application()
    backend.router.add_post("/v1/chat/completions", completion)
    backend.router.add_get("/health", ok)
    async with TestServer(backend) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        config = GatewayConfig(models={"remote": ModelConfig(name="remote", url=url),
                                       "idle": ModelConfig(name="idle", url=url)})
        async with TestClient(TestServer(create_app(config))) as client:
            for _ in range(3):
                answer = await client.post("/v1/chat/completions",
                                           json={"model": "remote", "messages": []})
                assert answer.status == 200, await answer.text()
            status = await (await client.get("/gateway/status")).json()
    recent = {m["name"]: m["recent"] for m in status["models"]}
    # Three requests in the first minute of the gateway's life.
    assert recent["remote"]["requests_per_min"] == 3.0
    assert 0 < recent["remote"]["p95_s"] < 5
    assert recent["idle"] == {"requests_per_min": 0.0, "p95_s": None}
