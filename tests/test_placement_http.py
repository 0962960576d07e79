"""GPU placement, LRU eviction, idle shutdown and manual control, with real processes."""

from __future__ import annotations

import threading

import httpx
import psutil
from harness import chat, fake_command, wait_until


def models_of(gw) -> dict[str, dict]:
    return {m["name"]: m for m in gw.status()["models"]}


def assert_accounting(gw) -> None:
    """used_gb on every GPU is the sum of what is placed there, and never over the total."""
    status = gw.status()
    for gpu in status["gpus"]:
        placed = sum(m["vram_gb"] for m in status["models"]
                     if gpu["id"] in m["gpus"] and m["state"] in ("starting", "ready", "stopping"))
        assert gpu["used_gb"] <= gpu["vram_gb"]
        assert gpu["used_gb"] <= placed + 1e-9


def test_two_models_swap_on_one_gpu_in_lru_order(gateway) -> None:
    models = {name: {"command": fake_command(), "vram_gb": 24} for name in ("m1", "m2")}
    models["m3"] = {"command": fake_command(), "vram_gb": 10}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 40}])
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("m1")).status_code == 200
        assert c.post("/v1/chat/completions", json=chat("m3")).status_code == 200
        assert gw.status()["gpus"][0]["used_gb"] == 34
        assert_accounting(gw)
        # m2 needs 24: m1 (24) must go; m3 alone would not make room.
        assert c.post("/v1/chat/completions", json=chat("m2")).status_code == 200
        state = models_of(gw)
        assert state["m1"]["state"] == "stopped" and state["m2"]["state"] == "ready"
        assert state["m3"]["state"] == "ready"
        assert gw.status()["gpus"][0]["used_gb"] == 34
        # Now m3 is least recently used... but evicting it alone does not fit m1, so m2 goes.
        assert c.post("/v1/chat/completions", json=chat("m3")).status_code == 200
        assert c.post("/v1/chat/completions", json=chat("m1")).status_code == 200
        state = models_of(gw)
        assert state["m2"]["state"] == "stopped" and state["m1"]["state"] == "ready"
        assert_accounting(gw)
    events = httpx.get(gw.url + "/gateway/events").json()["events"]
    evicted = [e["model"] for e in events if e["kind"] == "evicted"]
    assert evicted == ["m1", "m2"]
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'vllm_gateway_model_evictions_total{model="m1",reason="lru"} 1.0' in metrics


def test_lru_picks_the_least_recently_used_idle_model(gateway) -> None:
    models = {name: {"command": fake_command(), "vram_gb": 10} for name in ("a", "b", "c", "d")}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 30}])
    with gw.client() as c:
        for name in ("a", "b", "c", "a"):  # b is now the least recently used
            assert c.post("/v1/chat/completions", json=chat(name)).status_code == 200
        assert c.post("/v1/chat/completions", json=chat("d")).status_code == 200
    state = models_of(gw)
    assert state["b"]["state"] == "stopped"
    assert all(state[n]["state"] == "ready" for n in ("a", "c", "d"))


def test_three_models_on_two_gpus_without_over_commit(gateway) -> None:
    models = {name: {"command": fake_command(), "vram_gb": 30} for name in ("x", "y", "z")}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 48}, {"id": 1, "vram_gb": 48}])
    with gw.client() as c:
        for name in ("x", "y", "z"):
            assert c.post("/v1/chat/completions", json=chat(name)).status_code == 200
            assert_accounting(gw)
    state = models_of(gw)
    ready = [n for n in ("x", "y", "z") if state[n]["state"] == "ready"]
    assert len(ready) == 2  # only two 30 GB models fit on two 48 GB GPUs
    assert {state[n]["gpus"][0] for n in ready} == {0, 1}


def test_two_gpu_model_gets_both_ids(gateway) -> None:
    models = {"wide": {"command": fake_command("--gpu-memory-utilization", "{gpu_memory_utilization}"),
                       "vram_gb": 30, "gpu_count": 2}}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 80}, {"id": 1, "vram_gb": 80},
                               {"id": 2, "vram_gb": 20}])
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("wide")).status_code == 200
    wide = gw.model("wide")
    assert sorted(wide["gpus"]) == [0, 1]
    proc = psutil.Process(wide["pid"])
    assert proc.environ()["CUDA_VISIBLE_DEVICES"] in ("0,1", "1,0")
    assert "0.37" in proc.cmdline()  # 30 / 80 rounded down
    assert [g["used_gb"] for g in gw.status()["gpus"]] == [30, 30, 0]


def test_busy_model_is_not_evicted_and_the_other_request_waits(gateway) -> None:
    models = {"busy": {"command": fake_command("--token-delay", "0.05", "--tokens", "60"),
                       "vram_gb": 24},
              "other": {"command": fake_command(), "vram_gb": 24}}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 40}])
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("busy", max_tokens=1)).status_code == 200
    results: dict[str, int] = {}

    def long_request() -> None:
        r = httpx.post(gw.url + "/v1/chat/completions", json=chat("busy"), timeout=60)
        results["busy"] = r.status_code

    t = threading.Thread(target=long_request)
    t.start()
    wait_until(lambda: gw.model("busy")["in_flight"] == 1, 10, what="busy to be in flight")
    waiter = threading.Thread(target=lambda: results.__setitem__("other", httpx.post(
        gw.url + "/v1/chat/completions", json=chat("other"), timeout=60).status_code))
    waiter.start()
    wait_until(lambda: gw.model("other")["queued"] == 1, 10, what="other to queue")
    # While busy is in flight it is not evicted and other does not start.
    assert gw.model("busy")["state"] == "ready"
    assert gw.model("other")["state"] == "stopped"
    t.join(60)
    waiter.join(60)
    assert results == {"busy": 200, "other": 200}
    assert gw.model("busy")["state"] == "stopped"
    assert_accounting(gw)


def test_no_room_in_time_is_503_naming_the_holder(gateway) -> None:
    models = {"hog": {"command": fake_command("--token-delay", "0.1", "--tokens", "100"),
                      "vram_gb": 30},
              "late": {"command": fake_command(), "vram_gb": 30, "startup_timeout_s": 1}}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 40}])
    t = threading.Thread(target=lambda: httpx.post(gw.url + "/v1/chat/completions",
                                                   json=chat("hog"), timeout=60))
    t.start()
    wait_until(lambda: gw.model("hog")["in_flight"] == 1, 20, what="hog in flight")
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat("late"), timeout=30)
    assert r.status_code == 503
    assert "hog" in r.json()["error"]["message"]
    t.join(60)
    gw.wait_counters_zero()


def test_model_too_large_is_refused_by_check_config(tmp_path) -> None:
    from vllm_gateway.cli import main
    path = tmp_path / "big.yaml"
    path.write_text("gpus: [{id: 0, vram_gb: 40}]\nmodels:\n  big: {command: x, vram_gb: 80}\n")
    assert main(["check-config", str(path)]) == 2


def test_idle_shutdown_stops_the_process(gateway) -> None:
    gw = gateway({"sleepy": {"command": fake_command(), "idle_timeout_s": 1}})
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("sleepy")).status_code == 200
    pid = gw.model("sleepy")["pid"]
    gw.wait_state("sleepy", "stopped", timeout=15)
    wait_until(lambda: not psutil.pid_exists(pid), 10, what="the idle server to exit")
    events = httpx.get(gw.url + "/gateway/events").json()["events"]
    assert any(e["kind"] == "idle_stop" and e["model"] == "sleepy" for e in events)


def test_idle_time_counts_from_the_end_of_the_last_request(gateway) -> None:
    gw = gateway({"long": {"command": fake_command("--token-delay", "0.1"), "idle_timeout_s": 1}})
    with gw.client() as c:
        # The request lasts about 2.5 s, longer than the idle timeout.
        r = c.post("/v1/chat/completions", json=chat("long", max_tokens=25))
        assert r.status_code == 200
        assert gw.model("long")["state"] == "ready"
    gw.wait_state("long", "stopped", timeout=15)


def test_pinned_model_is_never_evicted_or_idle_stopped(gateway) -> None:
    models = {"pin": {"command": fake_command(), "vram_gb": 24, "pinned": True, "idle_timeout_s": 1},
              "guest": {"command": fake_command(), "vram_gb": 24, "startup_timeout_s": 2}}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 40}])
    gw.wait_state("pin", "ready", timeout=20)  # pinned models start with the gateway
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat("guest"), timeout=30)
    assert r.status_code == 503
    assert gw.model("pin")["state"] == "ready"


def test_max_loaded_models_holds(gateway) -> None:
    models = {name: {"command": fake_command()} for name in ("p", "q", "r")}
    gw = gateway(models, max_loaded_models=2)
    with gw.client() as c:
        for name in ("p", "q", "r", "p"):
            assert c.post("/v1/chat/completions", json=chat(name)).status_code == 200
            loaded = [m for m in gw.status()["models"] if m["state"] != "stopped"]
            assert len(loaded) <= 2
    assert models_of(gw)["q"]["state"] == "stopped"


def test_unload_waits_for_in_flight_requests(gateway) -> None:
    gw = gateway({"m": {"command": fake_command("--token-delay", "0.05")}})
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.__setitem__("code", httpx.post(
        gw.url + "/v1/chat/completions", json=chat("m", max_tokens=30), timeout=60).status_code))
    t.start()
    wait_until(lambda: gw.model("m")["in_flight"] == 1, 20, what="request in flight")
    r = httpx.post(gw.url + "/gateway/models/m/unload", timeout=60)
    assert r.json() == {"name": "m", "state": "stopped"}
    t.join(30)
    assert result["code"] == 200
    # A new request starts it again.
    assert httpx.post(gw.url + "/v1/chat/completions", json=chat("m"), timeout=60).status_code == 200


def test_steady_traffic_does_not_starve_a_model_waiting_for_its_memory(gateway) -> None:
    models = {"steady": {"command": fake_command("--token-delay", "0.02"), "vram_gb": 24},
              "rare": {"command": fake_command(), "vram_gb": 24, "startup_timeout_s": 20}}
    gw = gateway(models, gpus=[{"id": 0, "vram_gb": 40}])
    stop = threading.Event()
    codes: list[int] = []

    def traffic() -> None:
        # Overlapping requests: 'steady' is never idle while this runs.
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            while not stop.is_set():
                codes.append(c.post("/v1/chat/completions",
                                    json=chat("steady", max_tokens=10)).status_code)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: len(codes) >= 6, 30, what="steady traffic")
        r = httpx.post(gw.url + "/v1/chat/completions", json=chat("rare"), timeout=60)
        assert r.status_code == 200, r.text
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    # The steady model's requests waited behind the swap and were then served again.
    assert set(codes) == {200}
    gw.wait_counters_zero()
    assert_accounting(gw)
