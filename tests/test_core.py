"""The gateway core end to end: a real gateway process, fake backends as real processes."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import openai
import psutil
import pytest
from harness import chat, descendants, fake_command, sse_events, wait_until


def two_models() -> dict[str, object]:
    return {
        "alpha": {"command": fake_command(), "aliases": ["a", "gpt-4o-mini"]},
        "beta": {"command": fake_command("--token-delay", "0.01")},
    }


def test_routes_by_name_and_alias_and_rewrites_alias(gateway) -> None:
    gw = gateway(two_models())
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json=chat("gpt-4o-mini", temperature=0.5))
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "alpha"
        assert r.headers["X-Request-ID"]
        backend = gw.model("alpha")
        last = httpx.get(f"http://127.0.0.1:{backend['port']}/fake/last_request").json()
        # The alias was replaced by the name; nothing else in the body changed.
        assert last["body"] == chat("alpha", temperature=0.5)
        r = c.post("/v1/completions", json={"model": "beta", "prompt": "x", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "beta"
        r = c.post("/v1/embeddings", json={"model": "a", "input": "hello"})
        assert r.status_code == 200 and r.json()["data"][0]["embedding"]
    # Later requests reuse the running server.
    pid = gw.model("alpha")["pid"]
    with gw.client() as c:
        c.post("/v1/chat/completions", json=chat("alpha"))
    assert gw.model("alpha")["pid"] == pid


def test_models_list_and_status_shape(gateway) -> None:
    gw = gateway(two_models())
    with gw.client() as c:
        models = c.get("/v1/models").json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["alpha", "beta"]
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 200
        status = c.get("/gateway/status").json()
    assert status["gpus"] == []
    first = status["models"][0]
    for key in ("name", "state", "vram_gb", "gpus", "in_flight", "queued", "last_used", "port",
                "pid", "max_concurrent", "max_queue"):
        assert key in first
    assert first["state"] == "stopped" and first["pid"] is None and first["port"] is None


def test_openai_client_streams_through(gateway) -> None:
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


@pytest.mark.parametrize("body,status,needle", [
    (b"not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"messages": []}', 400, "no 'model'"),
    (b'{"model": 3}', 400, "'model' must be a string"),
    (b'{"model": "nope"}', 404, "nope"),
])
def test_bad_requests_get_openai_errors(gateway, body: bytes, status: int, needle: str) -> None:
    gw = gateway(two_models())
    r = httpx.post(gw.url + "/v1/chat/completions", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] and error["code"]


def test_unknown_paths_and_models_for_admin_endpoints(gateway) -> None:
    gw = gateway(two_models())
    r = httpx.get(gw.url + "/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(gw.url + "/gateway/models/nope/load")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = httpx.post(gw.url + "/gateway/models/nope/unload")
    assert r.status_code == 404
    r = httpx.delete(gw.url + "/v1/models")
    assert r.status_code == 405 and "error" in r.json()


def test_failed_start_is_503_with_the_backends_last_lines(gateway) -> None:
    gw = gateway({"broken": {"command": fake_command("--fail-start")}})
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat("broken"), timeout=60)
    assert r.status_code == 503
    assert "CUDA out of memory" in r.json()["error"]["message"]
    assert gw.model("broken")["state"] == "backoff"


def test_start_timeout_is_504(gateway) -> None:
    models = {"slow": {"command": fake_command(startup_delay=30), "startup_timeout_s": 1}}
    gw = gateway(models)
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat("slow"), timeout=60)
    assert r.status_code == 504
    assert "slow" in r.json()["error"]["message"]
    gw.wait_state("slow", "backoff")
    wait_until(lambda: not gw.model_pids(), 15, what="the timed-out server to be stopped")


def test_crash_mid_request_is_502_then_recovers(gateway) -> None:
    gw = gateway({"crashy": {"command": fake_command("--crash-after", "2")}})
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("crashy")).status_code == 200
        first_pid = gw.model("crashy")["pid"]
        r = c.post("/v1/chat/completions", json=chat("crashy"))
        assert r.status_code == 502, r.text
        # The crash is noticed and the worker children are cleaned up, then it restarts.
        r = c.post("/v1/chat/completions", json=chat("crashy"))
        assert r.status_code == 200, r.text
    assert gw.model("crashy")["pid"] != first_pid
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie"
    gw.wait_counters_zero()


def test_client_disconnect_closes_the_upstream(gateway) -> None:
    gw = gateway({"slowstream": {"command": fake_command("--token-delay", "0.2", "--tokens", "200")}})
    with httpx.Client(base_url=gw.url, timeout=30) as c, c.stream(
            "POST", "/v1/chat/completions", json=chat("slowstream", stream=True)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if "tok1" in line:
                break
    port = gw.model("slowstream")["port"]

    def disconnect_seen() -> dict | None:
        stats = httpx.get(f"http://127.0.0.1:{port}/fake/stats").json()
        return stats if stats["disconnects"] == 1 and stats["in_flight"] == 0 else None

    stats = wait_until(disconnect_seen, 10, what="backend saw disconnect")
    assert stats["completed"] == 0
    gw.wait_counters_zero()


def test_two_models_start_concurrently(gateway) -> None:
    models = {"slowstart": {"command": fake_command(startup_delay=4)},
              "quick": {"command": fake_command(startup_delay=0.2)}}
    gw = gateway(models)
    results: dict[str, float] = {}

    def call(name: str) -> None:
        t0 = time.monotonic()
        r = httpx.post(gw.url + "/v1/chat/completions", json=chat(name), timeout=60)
        assert r.status_code == 200
        results[name] = time.monotonic() - t0

    slow = threading.Thread(target=call, args=("slowstart",))
    slow.start()
    gw.wait_state("slowstart", "starting")
    call("quick")
    # The quick model answered while the slow one was still starting.
    assert gw.model("slowstart")["state"] == "starting"
    slow.join(30)
    assert results["slowstart"] > results["quick"]


def test_concurrent_first_requests_start_the_model_once(gateway) -> None:
    gw = gateway({"once": {"command": fake_command(startup_delay=1)}})
    threads = [threading.Thread(target=lambda: httpx.post(
        gw.url + "/v1/chat/completions", json=chat("once"), timeout=60)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'vllm_gateway_model_starts_total{model="once"} 1.0' in metrics
    assert 'vllm_gateway_requests_total{code="200",model="once"} 6.0' in metrics


def test_sigterm_leaves_no_process_behind(gateway) -> None:
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


def test_unload_and_load(gateway) -> None:
    gw = gateway(two_models())
    r = httpx.post(gw.url + "/gateway/models/alpha/load", timeout=60)
    assert r.status_code == 200 and r.json() == {"name": "alpha", "state": "ready"}
    pid = gw.model("alpha")["pid"]
    r = httpx.post(gw.url + "/gateway/models/alpha/unload", timeout=60)
    assert r.json() == {"name": "alpha", "state": "stopped"}
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert not descendants(gw.proc.pid)


def test_stream_events_are_untouched(gateway) -> None:
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
