"""The gateway on a real local Ray cluster of several nodes, seen through its HTTP surface.

Nodes declare GPUs (``ray start --num-gpus``) and their size comes from ``ray.gpu_vram_gb``
(no NVML here); fake backends are the model servers, started on the nodes by the gateway's
node agents.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest
from harness import GatewayProc, chat, sse_events
from helpers import wait_until
from ray_fixtures import GPU_GB, backend_processes, ray_model

pytestmark = pytest.mark.ray


def ask(gw: GatewayProc, model: str, stream: bool = False, **extra: Any) -> httpx.Response:
    with gw.client(timeout=90) as client:
        return client.post("/v1/chat/completions", json=chat(model, stream=stream, **extra))


def gpus_by_node(gw: Any) -> dict[str, list[dict[str, Any]]]:
    nodes: dict[str, list[dict[str, Any]]] = {}
    for gpu in gw.status()["gpus"]:
        nodes.setdefault(gpu["node"], []).append(gpu)
    return nodes


def test_placement_eviction_and_idle_stop_across_nodes(shared_cluster: Any, ray_gateway: Any,
                                                        mark: str) -> None:
    cluster = shared_cluster
    one, two = cluster.nodes[1], cluster.nodes[2]
    models = {"tp": ray_model(mark, 10, gpu_count=2),
              "m1": ray_model(mark, 16),
              "m2": ray_model(mark, 16, idle_timeout_s=3)}
    gw = ray_gateway(cluster.address, models)

    by_node = gpus_by_node(gw)
    assert sorted(len(g) for g in by_node.values()) == [1, 2]
    assert all(g["node_ip"] and g["vram_gb"] == GPU_GB for gs in by_node.values() for g in gs)

    # gpu_count 2: only the node with two GPUs can hold it.
    assert ask(gw, "tp").status_code == 200
    assert gw.model("tp")["node"] == two.node_id()
    assert len(gw.model("tp")["gpus"]) == 2
    # 16 GB does not fit beside tp's 10 GB on a 24 GB GPU: the other node.
    assert ask(gw, "m1").status_code == 200
    m1 = gw.model("m1")
    assert m1["node"] == one.node_id() and m1["node_ip"]
    for name in ("tp", "m1"):
        plain = ask(gw, name)
        assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"]
        streamed = ask(gw, name, stream=True)
        assert streamed.status_code == 200
        assert sse_events(streamed.text) and streamed.text.rstrip().endswith("data: [DONE]")

    # m2 fits nowhere: the least recently used idle model (tp) goes, on its node.
    assert ask(gw, "m1").status_code == 200
    assert ask(gw, "m2").status_code == 200
    assert gw.model("tp")["state"] == "stopped"
    assert gw.model("m1")["state"] == "ready"
    assert gw.model("m2")["node"] == two.node_id()
    assert gw.metric("vllm_gateway_model_evictions_total", model="tp", reason="lru") == 1

    # Idle for idle_timeout_s: stopped, counted.
    gw.wait_state("m2", "stopped", timeout=30)
    assert gw.metric("vllm_gateway_model_evictions_total", model="m2", reason="idle") == 1
    assert len(backend_processes(mark)) >= 1  # m1 still runs

    assert gw.stop(signal.SIGTERM) == 0
    wait_until(lambda: not backend_processes(mark), 20, what="no fake backend left")


def test_node_joins_takes_a_model_and_leaves_with_it(ray_cluster_factory: Any,
                                                     ray_gateway: Any, mark: str) -> None:
    cluster = ray_cluster_factory([1])
    slow = ray_model(mark, 16)
    slow["command"] = [*slow["command"], "--token-delay", "0.05"]
    models = {"a": ray_model(mark, 16), "b": slow}
    gw = ray_gateway(cluster.address, models)
    assert ask(gw, "a").status_code == 200
    first = cluster.nodes[1].node_id()

    joined = cluster.add_node(1)
    joined_id = joined.node_id()
    wait_until(lambda: joined_id in gpus_by_node(gw), 30, what="the new node's GPU")
    # b does not fit beside a: it takes the new node instead of evicting a.
    assert ask(gw, "b").status_code == 200
    assert gw.model("b")["node"] == joined_id
    assert gw.model("a")["state"] == "ready"

    # The node holding b dies with a request in flight.
    assert ask(gw, "b").status_code == 200
    outcome: dict[str, Any] = {}

    def long_request() -> None:
        try:
            outcome["response"] = ask(gw, "b", max_tokens=200)
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    t0 = time.monotonic()
    request = threading.Thread(target=long_request)
    request.start()
    wait_until(lambda: gw.model("b")["in_flight"] == 1, 10, what="b's request in flight")
    cluster.kill_raylet(joined)
    request.join(60)
    response = outcome.get("response")
    assert response is not None and response.status_code == 502, outcome
    b = wait_until(lambda: (m := gw.model("b"))["state"] in ("failed", "stopped") and m, 30,
                   what="b failed")
    lost_after = time.monotonic() - t0
    error = b["error"] or ""
    assert joined_id is not None and joined_id[:12] in error, b
    assert "lost" in error or "left the Ray cluster" in error, b
    wait_until(lambda: joined_id not in gpus_by_node(gw), 30, what="its GPU gone")

    # The next request places it again on a live node (evicting a, the only room left).
    assert ask(gw, "b").status_code == 200
    assert gw.model("b")["node"] == first
    print(f"node loss noticed in {lost_after:.1f} s")


def test_sigkill_of_the_gateway_leaves_no_model_process(shared_cluster: Any, ray_gateway: Any,
                                                        mark: str) -> None:
    cluster = shared_cluster
    gw = ray_gateway(cluster.address, {"a": ray_model(mark, 20), "b": ray_model(mark, 20),
                                       "c": ray_model(mark, 20)})
    for name in ("a", "b", "c"):
        assert ask(gw, name).status_code == 200
    assert len({gw.model(name)["node"] for name in ("a", "b", "c")}) == 2  # on both nodes
    assert backend_processes(mark)
    t0 = time.monotonic()
    gw.stop(signal.SIGKILL)
    # Ray notices a dead driver and kills its actors within seconds; the bound is generous.
    wait_until(lambda: not backend_processes(mark), 45, interval=0.2,
               what="fake backends gone after the gateway's SIGKILL")
    print(f"no model process left {time.monotonic() - t0:.1f} s after SIGKILL")


def test_a_model_wider_than_every_node_is_refused_naming_the_key(
        shared_cluster: Any, ray_gateway: Any, mark: str) -> None:
    with pytest.raises(AssertionError, match="gateway exited with 2") as failed:
        ray_gateway(shared_cluster.address, {"wide": ray_model(mark, 10, gpu_count=3)})
    assert "models.wide.gpu_count: 3 GPUs on one node" in str(failed.value)
    assert "has 2" in str(failed.value)
