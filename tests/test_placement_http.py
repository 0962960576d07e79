"""What placement and idle stops do to real processes: the GPUs a server is given, and a
server stopped when idle. The rules themselves are in test_placement_rules.py (in-process)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import psutil
from harness import GatewayProc, chat, fake_command
from helpers import wait_until

Start = Callable[..., GatewayProc]


def test_two_gpu_model_gets_both_ids(gateway: Start) -> None:
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


def test_idle_shutdown_stops_the_process(gateway: Start) -> None:
    gw = gateway({"sleepy": {"command": fake_command(), "idle_timeout_s": 1}})
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("sleepy")).status_code == 200
    pid = gw.model("sleepy")["pid"]
    gw.wait_state("sleepy", "stopped", timeout=15)
    wait_until(lambda: not psutil.pid_exists(pid), 10, what="the idle server to exit")
    events = httpx.get(gw.url + "/gateway/events").json()["events"]
    assert any(e["kind"] == "idle_stop" and e["model"] == "sleepy" for e in events)
