"""The sleep tier through the HTTP surface, with the fake backend as real processes.

The rules themselves are tested in-process (test_sleep_tier.py); these are
what only processes show: the server really stays up while asleep, a request
held by a sleeping server, a backend that fails its sleep or wake, one that
dies while asleep, a client that hangs up while its model wakes.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil
from harness import GatewayProc, chat, fake_command
from helpers import wait_until

Start = Callable[..., GatewayProc]
FAST_FAULTS = {"health_interval_s": 0.3, "unhealthy_probes": 2, "stop_grace_s": 3}
# An idle model sleeps after this; long enough for a test to read the answer first.
IDLE_S = 1.0


def sleeper(*extra: str, level: int = 1, **cfg: Any) -> dict[str, Any]:
    return {"command": fake_command(*extra), "sleep": level, "idle_timeout_s": IDLE_S, **cfg}


def post(gw: GatewayProc, model: str, timeout: float = 30.0) -> httpx.Response:
    body = chat(model, max_tokens=4, temperature=0)
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=timeout)


def text(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    content: str = resp.json()["choices"][0]["message"]["content"]
    return content


def events(gw: GatewayProc, model: str, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(gw.url + "/gateway/events",
                                            timeout=10).json()["events"]
    return [e for e in found if e["model"] == model and e["kind"] == kind]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def backend_stats(gw: GatewayProc, model: str) -> dict[str, Any]:
    port = gw.model(model)["port"]
    stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/fake/stats", timeout=10).json()
    return stats


def test_an_idle_model_sleeps_and_concurrent_requests_wake_it_once(gateway: Start) -> None:
    gw = gateway({"m": sleeper("--wake-delay", "0.5")})
    before = text(post(gw, "m"))
    pid = gw.model("m")["pid"]
    asleep = gw.wait_state("m", "sleeping", timeout=15)
    assert asleep["sleep_level"] == 1 and asleep["sleep"] == 1
    # The server stays: same process, and it says it sleeps.
    assert asleep["pid"] == pid and psutil.pid_exists(pid)
    assert backend_stats(gw, "m")["is_sleeping"] is True
    assert gw.metric("vllm_gateway_sleeps_total", model="m", level="1") == 1
    assert "level 1 (idle)" in events(gw, "m", "asleep")[-1]["message"]

    with ThreadPoolExecutor(4) as pool:
        answers = [text(r) for r in pool.map(lambda _: post(gw, "m"), range(4))]
    assert answers == [before] * 4
    woken = gw.model("m")
    assert woken["pid"] == pid and woken["state"] in ("ready", "sleeping")
    assert woken["last_wake_s"] >= 0.5
    assert gw.metric("vllm_gateway_wakes_total", model="m") == 1
    assert gw.metric("vllm_gateway_model_starts_total", model="m") == 1
    assert len(events(gw, "m", "woken")) == 1
    gw.wait_counters_zero()


def test_a_second_model_puts_the_first_to_sleep_instead_of_stopping_it(gateway: Start) -> None:
    models = {name: sleeper(vram_gb=30, sleep_vram_gb=2, idle_timeout_s=0) for name in "ab"}
    # Host RAM is declared: level 1 holds the weights there (30 GB), more than this box has.
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 40}], host_memory_gb=64)
    first = text(post(gw, "a"))
    pid_a = gw.model("a")["pid"]
    text(post(gw, "b"))
    a = gw.model("a")
    assert (a["state"], a["sleep_level"], a["pid"]) == ("sleeping", 1, pid_a)
    assert gw.status()["gpus"][0]["used_gb"] == 32
    assert "(lru)" in events(gw, "a", "asleep")[-1]["message"]
    # Back to a: b sleeps, a wakes in the same process with the same answer.
    pid_b = gw.model("b")["pid"]
    assert text(post(gw, "a")) == first
    b = gw.model("b")
    assert (b["state"], b["pid"]) == ("sleeping", pid_b)
    assert gw.model("a")["pid"] == pid_a
    assert gw.metric("vllm_gateway_model_starts_total", model="a") == 1
    assert gw.metric("vllm_gateway_wakes_total", model="a") == 1


def test_a_failed_sleep_stops_the_model_and_says_why(gateway: Start) -> None:
    gw = gateway({"loud": sleeper("--fail-sleep", "error"),
                  "silent": sleeper("--fail-sleep", "silent")})
    pids = {}
    for name in ("loud", "silent"):
        text(post(gw, name))
        pids[name] = gw.model(name)["pid"]
    for name, why in (("loud", "answered 500"), ("silent", "/is_sleeping says false")):
        stopped = gw.wait_state(name, "stopped", timeout=15)
        assert stopped["pid"] is None and stopped["sleep_level"] is None
        [failed] = events(gw, name, "sleep_failed")
        assert why in failed["message"], failed
        wait_until(functools.partial(gone, pids[name]), 15, what=f"{name} gone")
        assert gw.metric("vllm_gateway_sleeps_total", model=name, level="1") == 0
    # The next request starts it cold.
    text(post(gw, "loud"))
    assert gw.metric("vllm_gateway_model_starts_total", model="loud") == 2


def test_a_failed_wake_is_served_by_a_cold_start(gateway: Start) -> None:
    gw = gateway({"m": sleeper("--fail-wake", "error")})
    before = text(post(gw, "m"))
    pid = gw.model("m")["pid"]
    gw.wait_state("m", "sleeping", timeout=15)
    # The waiting request gets the cold start's answer, not an error.
    assert text(post(gw, "m")) == before
    [failed] = events(gw, "m", "wake_failed")
    assert "cold-starting" in failed["message"]
    assert gw.model("m")["pid"] != pid
    assert gone(pid)
    assert gw.metric("vllm_gateway_model_starts_total", model="m") == 2
    assert gw.metric("vllm_gateway_wakes_total", model="m") == 0
    gw.wait_counters_zero()


def test_a_server_that_dies_asleep_is_noticed_without_traffic(gateway: Start) -> None:
    gw = gateway({"m": sleeper()}, faults=FAST_FAULTS)
    text(post(gw, "m"))
    asleep = gw.wait_state("m", "sleeping", timeout=15)
    os.kill(asleep["pid"], signal.SIGKILL)
    failed = gw.wait_state("m", "failed", timeout=10)
    assert failed["sleep_level"] is None and "exited" in (failed["error"] or "")
    assert len(events(gw, "m", "crashed")) == 1
    assert gw.status()["host_memory"]["used_gb"] == 0
    text(post(gw, "m"))
    assert gw.model("m")["pid"] != asleep["pid"]


def test_a_client_gone_while_its_model_wakes_leaves_nothing_behind(gateway: Start) -> None:
    gw = gateway({"m": sleeper("--wake-delay", "3")})
    text(post(gw, "m"))
    gw.wait_state("m", "sleeping", timeout=15)
    try:
        post(gw, "m", timeout=0.7)
        raise AssertionError("the wake should outlast the client's patience")
    except httpx.ReadTimeout:
        pass
    # The client hung up during the wake: nothing of it is left in the counters.
    assert gw.model("m")["state"] == "waking"
    gw.wait_counters_zero(timeout=10)
    wait_until(lambda: gw.metric("vllm_gateway_requests_total", model="m", code="499") == 1,
               10, what="the disconnect counted as 499")
    def woken() -> dict[str, Any] | None:
        m = gw.model("m")
        return m if m["state"] in ("ready", "sleeping") else None

    settled = wait_until(woken, 15, what="the wake to finish")
    assert settled["in_flight"] == 0 and settled["queued"] == 0
    assert gw.metric("vllm_gateway_requests_queued", model="m") == 0
    assert gw.metric("vllm_gateway_requests_in_flight", model="m") == 0
    # The model still works afterwards.
    text(post(gw, "m"))
