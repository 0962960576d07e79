"""Safe retries and timeouts end to end: only a request that never reached the backend is
sent again, and ``request_timeout_s`` cuts stalls but not slow, steady streams."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from admission_http_helpers import (
    UNHANDLED,
    backend_stats,
    metrics_text,
    model_status,
    wait_counts,
)
from harness import chat, fake_command, sse_events
from helpers import free_port, wait_for
from procutil import fake_backend_cmd, kill_group, wait_port_blocking


@contextmanager
def fake_backend(tmp_path: Path, port: int, name: str, *extra: str) -> Iterator[Path]:
    """A fake backend this test starts itself (behind a ``url:`` model); yields its log."""
    log = tmp_path / f"backend-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            fake_backend_cmd(port, name, "--startup-delay", "0", "--no-worker", *extra),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        kill_group(proc.pid)
        proc.wait(10)


@asynccontextmanager
async def dropping_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """Reads each whole request, records it, and hangs up without answering."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        received.append(head + await reader.readexactly(length))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        await server.wait_closed()


def request_lines(log: str, request_id: str) -> list[str]:
    return [line for line in log.splitlines() if request_id in line]


async def test_refused_connection_is_retried_until_the_backend_is_up(
        gateway: Any, tmp_path: Path) -> None:
    port = free_port()
    gw = gateway({"later": {"url": f"http://127.0.0.1:{port}"}},
                 env={"GATEWAY_RETRY_DELAY": "0.3", "GATEWAY_RETRY_BACKOFF": "1",
                      "GATEWAY_MAX_RETRIES": "40"})
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as c:
        reply = asyncio.create_task(c.post("/v1/chat/completions", json=chat("later"),
                                           headers={"X-Request-ID": "retry-me"}))

        async def first_retry_logged() -> bool:
            return "request retry-me to later: connection refused, retry 1 of 40" in gw.log()
        await wait_for(first_retry_logged, 20, "the first retry in the gateway log")
        assert not reply.done()
        with fake_backend(tmp_path, port, "later"):
            r = await asyncio.wait_for(reply, 30)
            assert r.status_code == 200, r.text
            stats = await backend_stats(port)
    assert stats["requests"] == 1 and stats["completed"] == 1
    retries = [line for line in request_lines(gw.log(), "retry-me") if "refused, retry" in line]
    assert retries
    metrics = await metrics_text(gw)
    assert f'vllm_gateway_retries_total{{model="later"}} {float(len(retries))}' in metrics


def test_retries_give_up_with_502(gateway: Any) -> None:
    gw = gateway({"never": {"url": f"http://127.0.0.1:{free_port()}"}},
                 retry={"max_retries": 2, "delay_s": 0.05})
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat("never"), timeout=30,
                   headers={"X-Request-ID": "give-up"})
    assert r.status_code == 502
    assert "after 3 attempt(s)" in r.json()["error"]["message"]
    assert len([line for line in request_lines(gw.log(), "give-up") if "refused, retry" in line]) == 2


async def test_a_request_whose_body_was_sent_is_never_retried(
        gateway: Any, tmp_path: Path) -> None:
    crash_port = free_port()
    async with dropping_server() as (drop_port, received):
        gw = gateway({"drops": {"url": f"http://127.0.0.1:{drop_port}"},
                      "crashes": {"url": f"http://127.0.0.1:{crash_port}"}},
                     env={"GATEWAY_RETRY_DELAY": "0.05", "GATEWAY_MAX_RETRIES": "5"})
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
            r = await c.post("/v1/chat/completions", json=chat("drops"),
                             headers={"X-Request-ID": "dropped"})
            assert r.status_code == 502, r.text
            assert len(received) == 1
            assert json.loads(received[0].split(b"\r\n\r\n", 1)[1]) == chat("drops")
            with fake_backend(tmp_path, crash_port, "crashes", "--crash-after", "1") as log:
                await asyncio.to_thread(wait_port_blocking, crash_port, 20)
                r = await c.post("/v1/chat/completions", json=chat("crashes"),
                                 headers={"X-Request-ID": "crashed"})
                assert r.status_code == 502, r.text
                output = log.read_text()
    assert output.count("crashing on generation request") == 1, output
    assert "crashing on generation request 1 " in output
    for request_id in ("dropped", "crashed"):
        assert not [line for line in request_lines(gw.log(), request_id) if "refused, retry" in line]
    await wait_counts(gw, "drops", 0, 0)
    await wait_counts(gw, "crashes", 0, 0)


async def test_stalls_time_out_but_slow_steady_streams_are_not_cut(gateway: Any) -> None:
    gw = gateway({"t": {"command": fake_command(worker=False), "request_timeout_s": 1}})
    url = "/v1/chat/completions"
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as c:
        assert (await c.post(url, json=chat("t"))).status_code == 200  # start it first
        stalled, stalled_stream, mid_stream, steady = await asyncio.gather(
            c.post(url, json=chat("t", fake={"stall_after": 0})),
            c.post(url, json=chat("t", stream=True, fake={"stall_after": 0})),
            c.post(url, json=chat("t", stream=True, max_tokens=10, fake={"stall_after": 3})),
            c.post(url, json=chat("t", stream=True, max_tokens=8, fake={"token_delay": 0.35})))
    for r in (stalled, stalled_stream):
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["type"] == "timeout_error" and "t sent no answer within 1 s" in error["message"]
    assert mid_stream.status_code == 200
    events = sse_events(mid_stream.text)
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == [" tok0", " tok1"]
    assert events[-1]["error"]["status"] == 504 and "mid-answer" in events[-1]["error"]["message"]
    assert "[DONE]" not in mid_stream.text
    # 8 tokens 0.35 s apart take about 3 s in all, three times the timeout, and all arrive.
    assert steady.status_code == 200
    tokens = [e["choices"][0]["delta"].get("content") for e in sse_events(steady.text)[1:]]
    assert tokens == [f" tok{i}" for i in range(8)]
    assert steady.text.rstrip().endswith("data: [DONE]")
    await wait_counts(gw, "t", 0, 0)
    metrics = await metrics_text(gw)
    assert 'vllm_gateway_requests_total{code="504",model="t"} 3.0' in metrics
    port = (await model_status(gw, "t"))["port"]

    async def backend_idle() -> dict[str, Any] | None:
        stats = await backend_stats(port)
        return stats if stats["in_flight"] == 0 else None
    stats = await wait_for(backend_idle, 15, "the stalled requests closed at the backend")
    assert stats["disconnects"] == 3
    # An error the backend answers is the backend's answer: passed on once, never retried.
    async with httpx.AsyncClient(timeout=30) as c:
        await c.post(f"http://127.0.0.1:{port}/fake/reset_stats")
        r = await c.post(gw.url + url, json=chat("t", fake={"status": 503}))
    assert r.status_code == 503 and "Fake error" in r.json()["error"]["message"]
    assert (await backend_stats(port))["requests"] == 1
    log = gw.log()
    assert not [w for w in UNHANDLED if w in log], log[-4000:]
