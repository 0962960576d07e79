"""Manual sleep: ``POST /gateway/models/{name}/sleep`` and ``vllm-gateway sleep NAME``, against a
real gateway with fake backends (which mirror vLLM's sleep API in dev mode)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest
from harness import PY, GatewayProc, chat, fake_command
from security_helpers import error_of, running


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    models = {
        # Never idle long enough to sleep by itself: only the operator puts it to sleep.
        "dozer": {"command": fake_command(worker=False), "sleep": 1, "idle_timeout_s": 3600,
                  "aliases": ["dz"]},
        "awake": {"command": fake_command(worker=False)},
    }
    with running(tmp_path_factory.mktemp("sleep-admin"), models) as gateway:
        yield gateway


def sleep(gw: GatewayProc, name: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/gateway/models/{name}/sleep", timeout=60)


def backend_asleep(gw: GatewayProc, name: str) -> bool:
    port = gw.model(name)["port"]
    asleep: bool = httpx.get(f"http://127.0.0.1:{port}/fake/stats", timeout=10).json()[
        "is_sleeping"]
    return asleep


def test_a_ready_model_sleeps_on_request_and_a_request_wakes_it(gw: GatewayProc) -> None:
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat("dozer")).status_code == 200
    pid = gw.model("dozer")["pid"]
    r = sleep(gw, "dz")  # an alias names the model as for a request
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "dozer", "state": "sleeping"}
    model = gw.model("dozer")
    assert model["state"] == "sleeping" and model["sleep_level"] == 1 and model["pid"] == pid
    assert backend_asleep(gw, "dozer")
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat("dozer")).status_code == 200
    assert gw.model("dozer")["state"] == "ready" and gw.model("dozer")["pid"] == pid
    assert not backend_asleep(gw, "dozer")


def test_sleep_is_409_for_a_model_with_sleep_off_or_not_ready(gw: GatewayProc) -> None:
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat("awake")).status_code == 200
    error = error_of(sleep(gw, "awake"), 409)
    assert error["message"] == "cannot put model awake to sleep: sleep is off (models.awake.sleep)"
    assert gw.model("awake")["state"] == "ready"
    assert httpx.post(gw.url + "/gateway/models/dozer/unload", timeout=60).status_code == 200
    error = error_of(sleep(gw, "dozer"), 409)
    assert error["message"] == "cannot put model dozer to sleep: it is stopped, not ready"
    assert error["code"] == "conflict"
    assert gw.model("dozer")["state"] == "stopped"
    assert "no model named 'nope'" in error_of(sleep(gw, "nope"), 404)["message"]


def test_the_sleep_command(gw: GatewayProc) -> None:
    assert httpx.post(gw.url + "/gateway/models/dozer/load", timeout=60).status_code == 200
    run = [PY, "-m", "vllm_gateway.cli", "sleep", "--url", gw.url]
    out = subprocess.run([*run, "dozer"], capture_output=True, text=True, timeout=60, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (0, "dozer: sleeping\n", "")
    assert gw.model("dozer")["state"] == "sleeping"
    out = subprocess.run([*run, "awake"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("vllm-gateway: 409: cannot put model awake to sleep: sleep is off "
                          "(models.awake.sleep)\n")
