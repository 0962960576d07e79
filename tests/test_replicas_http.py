"""Two replicas of one model answering through a real gateway, with fake backends as real
processes (issue 20): the second replica starts when requests wait for a slot, both backends
answer, status lists each replica, and an operator sets the count with /load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from harness import Start, chat, fake_command
from helpers import wait_until


def answered_by(port: int) -> int:
    """Generations a backend received, from its own request log."""
    log = httpx.get(f"http://127.0.0.1:{port}/fake/requests", timeout=10).json()
    return sum(1 for entry in log if entry["target"] == "/v1/chat/completions")


def test_two_replicas_answer_and_an_operator_sets_the_count(gateway: Start) -> None:
    gw = gateway({"m": {"command": fake_command("--token-delay", "0.1", "--tokens", "12"),
                        "max_concurrent": 1, "replicas": {"min": 0, "max": 2},
                        "scale_up_after_s": 0.3}})

    def ask(_: int) -> int:
        with gw.client() as c:
            return c.post("/v1/chat/completions", json=chat("m")).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(ask, range(4)))
    assert codes == [200] * 4
    doc = gw.model("m")
    assert doc["state"] == "ready" and len(doc["replicas"]) == 2, doc
    ports = [r["port"] for r in doc["replicas"]]
    assert len(set(ports)) == 2 and all(r["pid"] and r["state"] == "ready"
                                        for r in doc["replicas"])
    counts = [answered_by(port) for port in ports]
    assert sum(counts) == 4 and min(counts) >= 1, counts
    assert gw.metric("vllm_gateway_replica_starts_total", model="m", replica="1") == 1
    gw.wait_counters_zero()
    with gw.client() as c:
        one = c.post("/gateway/models/m/load", json={"replicas": 1})
        assert one.status_code == 200 and one.json() == {"name": "m", "state": "ready",
                                                         "replicas": 1}
        wait_until(lambda: len(gw.model("m")["replicas"]) == 1, what="one replica left")
        two = c.post("/gateway/models/m/load", json={"replicas": 2})
        assert two.json()["replicas"] == 2
        too_many = c.post("/gateway/models/m/load", json={"replicas": 3})
        assert too_many.status_code == 400 and "replicas.max" in too_many.json()["error"]["message"]
        bad = c.post("/gateway/models/m/load", json={"replicas": "two"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "replicas"
        assert c.post("/gateway/models/m/load").json() == {"name": "m", "state": "ready"}
