"""The gateway core end to end where processes matter: a real gateway process, fake backends as
real processes (streams, crashes, disconnects, signals). Routing, errors and starts are tested
in-process in test_routing_rules.py and test_start_rules.py."""

from __future__ import annotations

import signal

import httpx
import openai
import psutil
from harness import Start, chat, descendants, fake_command, sse_events
from helpers import wait_until


def two_models() -> dict[str, object]:
    return {
        "alpha": {"command": fake_command(), "aliases": ["a", "gpt-4o-mini"]},
        "beta": {"command": fake_command("--token-delay", "0.01")},
    }


def test_openai_client_streams_through(gateway: Start) -> None:
    gw = gateway(two_models())
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="a", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=5,
        stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces).split() == [f"tok{i}" for i in range(5)]
    assert usage is not None and usage.completion_tokens == 5
    listed = [m.id for m in client.models.list()]
    assert listed == ["alpha", "beta"]
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'vllm_gateway_requests_total{code="200",model="alpha"} 1.0' in metrics


def test_crash_mid_request_is_502_then_recovers(gateway: Start) -> None:
    gw = gateway({"crashy": {"command": fake_command("--crash-after", "2")}})
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("crashy")).status_code == 200
        first_pid = gw.model("crashy")["pid"]
        r = c.post("/v1/chat/completions", json=chat("crashy"))
        assert r.status_code == 502, r.text
        # The crash is noticed without traffic (a request sent into the dying server's listen
        # queue before then is reset after it was sent: a 502 too, never retried, as the
        # backend may have begun it) and the worker children are cleaned up...
        wait_until(lambda: gw.model("crashy")["state"] != "ready", 10, what="crash noticed")
        # ...then the next request starts it again.
        r = c.post("/v1/chat/completions", json=chat("crashy"))
        assert r.status_code == 200, r.text
    assert gw.model("crashy")["pid"] != first_pid
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie"
    gw.wait_counters_zero()


def test_client_disconnect_closes_the_upstream(gateway: Start) -> None:
    gw = gateway({"slowstream": {"command": fake_command("--token-delay", "0.2", "--tokens", "200")}})
    with httpx.Client(base_url=gw.url, timeout=30) as c, c.stream(
            "POST", "/v1/chat/completions", json=chat("slowstream", stream=True)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if "tok1" in line:
                break
    port = gw.model("slowstream")["port"]

    def disconnect_seen() -> dict[str, int] | None:
        stats = httpx.get(f"http://127.0.0.1:{port}/fake/stats").json()
        return stats if stats["disconnects"] == 1 and stats["in_flight"] == 0 else None

    stats = wait_until(disconnect_seen, 10, what="backend saw disconnect")
    assert stats["completed"] == 0
    gw.wait_counters_zero()


def test_sigterm_leaves_no_process_behind(gateway: Start) -> None:
    gw = gateway(two_models())
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("alpha")).status_code == 200
        assert c.post("/v1/chat/completions", json=chat("beta")).status_code == 200
    procs = [psutil.Process(p) for p in gw.model_pids()]
    assert len(procs) >= 4  # two servers, each with a worker child
    assert gw.stop(signal.SIGTERM) == 0
    _, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive
    assert "stopped" in gw.log()


def test_unload_and_load(gateway: Start) -> None:
    gw = gateway(two_models())
    r = httpx.post(gw.url + "/gateway/models/alpha/load", timeout=60)
    assert r.status_code == 200 and r.json() == {"name": "alpha", "state": "ready"}
    pid = gw.model("alpha")["pid"]
    r = httpx.post(gw.url + "/gateway/models/alpha/unload", timeout=60)
    assert r.json() == {"name": "alpha", "state": "stopped"}
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert not descendants(gw.proc.pid)


def test_stream_events_are_untouched(gateway: Start) -> None:
    gw = gateway(two_models())
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=chat("beta", stream=True, max_tokens=3))
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert r.text.rstrip().endswith("data: [DONE]")
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [e["choices"][0]["delta"].get("content") for e in events[1:]]
    assert tokens == [" tok0", " tok1", " tok2"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
