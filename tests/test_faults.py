"""Faults survived: deaths and hangs noticed without traffic, no orphans even when the gateway
is SIGKILLed, shutdown that drains then cancels. Backoff and hold after failed starts are
tested in-process (test_start_rules.py)."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
from harness import PY, Start, chat, fake_command, start_gateway
from helpers import wait_until

FAST_FAULTS = {"start_backoff_s": 1, "start_backoff_max_s": 30, "max_failed_starts": 2,
               "health_interval_s": 0.3, "unhealthy_probes": 2, "stop_grace_s": 3}


def test_death_while_idle_is_noticed_without_traffic(gateway: Start) -> None:
    gw = gateway({"victim": {"command": fake_command()}}, faults=FAST_FAULTS)
    assert httpx.post(gw.url + "/v1/chat/completions", json=chat("victim"), timeout=30).status_code == 200
    pid = gw.model("victim")["pid"]
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == pid]
    assert len(group) == 2  # the server and its worker
    os.kill(pid, signal.SIGKILL)  # the worker survives this, as vLLM's do
    failed = gw.wait_state("victim", "failed", timeout=10)
    assert "exited" in failed["error"]
    # Its memory is released only once every process of the group is gone.
    _, alive = psutil.wait_procs(group, timeout=15)
    assert not alive
    wait_until(lambda: gw.model("victim")["gpus"] == [], 10, what="placement released")
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat("victim"), timeout=30)
    assert r.status_code == 200
    assert gw.model("victim")["pid"] != pid


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_hung_backend_is_restarted(gateway: Start) -> None:
    gw = gateway({"hangs": {"command": fake_command()}}, faults=FAST_FAULTS)
    assert httpx.post(gw.url + "/v1/chat/completions", json=chat("hangs"), timeout=30).status_code == 200
    before = gw.model("hangs")
    httpx.post(f"http://127.0.0.1:{before['port']}/fake/hang", timeout=5)
    wait_until(lambda: gw.model("hangs")["state"] in ("failed", "stopping", "stopped"), 15,
               what="the hung backend to be killed")
    events = httpx.get(gw.url + "/gateway/events").json()["events"]
    assert any(e["kind"] == "unhealthy" for e in events)
    assert httpx.post(gw.url + "/v1/chat/completions", json=chat("hangs"), timeout=30).status_code == 200
    assert gw.model("hangs")["pid"] != before["pid"]


def test_sigkill_of_the_gateway_takes_model_processes_down(gateway: Start) -> None:
    gw = gateway({"a": {"command": fake_command()}, "b": {"command": fake_command()}})
    for name in ("a", "b"):
        assert httpx.post(gw.url + "/v1/chat/completions", json=chat(name), timeout=30).status_code == 200
    procs = [psutil.Process(p) for p in gw.model_pids()]
    assert len(procs) == 4
    gw.proc.kill()
    gw.proc.wait(10)
    _, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, f"left behind: {alive}"


STUBBORN = textwrap.dedent("""
    import http.server, signal, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
        def log_message(self, *a):
            pass
    print("Application startup complete.", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_restart_cleans_recorded_leftovers(tmp_path: Path) -> None:
    models = {"stubborn": {"command": [PY, "-c", STUBBORN, "{port}"]}}
    gw = start_gateway(tmp_path, models, faults=FAST_FAULTS)
    try:
        assert httpx.post(gw.url + "/gateway/models/stubborn/load", timeout=30).status_code == 200
        pid = gw.model("stubborn")["pid"]
        gw.proc.kill()  # SIGTERM from the parent-death signal is ignored by this server
        gw.proc.wait(10)
        assert psutil.pid_exists(pid)
        # A new gateway on the same port and state dir stops what the dead one left.
        config = gw.config_path.read_text()
        gw2 = start_gateway(tmp_path, models, faults=FAST_FAULTS,
                            server={"port": gw.port}, wait=True)
        try:
            wait_until(lambda: not psutil.pid_exists(pid) or
                       psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 20,
                       what="the leftover server to be stopped")
            events = httpx.get(gw2.url + "/gateway/events").json()["events"]
            assert any(e["kind"] == "cleanup" for e in events), config
        finally:
            gw2.stop()
    finally:
        gw.stop()
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def test_shutdown_drains_then_cancels(gateway: Start) -> None:
    models = {"quick": {"command": fake_command("--token-delay", "0.05")},
              "endless": {"command": fake_command("--token-delay", "0.2", "--tokens", "1000")}}
    gw = gateway(models, server={"shutdown_timeout_s": 2})
    results: dict[str, int | str] = {}

    def quick() -> None:
        results["quick"] = httpx.post(gw.url + "/v1/chat/completions",
                                      json=chat("quick", max_tokens=15), timeout=30).status_code

    def endless() -> None:
        with httpx.stream("POST", gw.url + "/v1/chat/completions",
                          json=chat("endless", stream=True), timeout=30) as r:
            results["endless"] = r.read().decode()

    for name in ("quick", "endless"):
        httpx.post(f"{gw.url}/gateway/models/{name}/load", timeout=30)
    threads = [threading.Thread(target=quick), threading.Thread(target=endless)]
    for t in threads:
        t.start()
    wait_until(lambda: all(gw.model(n)["in_flight"] == 1 for n in ("quick", "endless")), 10,
               what="both requests in flight")
    gw.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert results["quick"] == 200  # finished within the deadline
    # The endless stream was cut at the deadline with a clear error.
    assert "shut down" in str(results["endless"])
    assert gw.proc.wait(30) == 0


def test_hung_backend_under_load_fails_its_requests_and_restarts(gateway: Start) -> None:
    """A wedged server never finishes its requests: they end with an error within the health
    timeout (not whenever the server would have finished), and the model comes back."""
    gw = gateway({"hangs": {"command": fake_command("--token-delay", "0.05")}},
                 faults=FAST_FAULTS)
    assert httpx.post(gw.url + "/v1/chat/completions", json=chat("hangs"), timeout=30).status_code == 200
    before = gw.model("hangs")
    outcomes: list[str] = []

    def stream() -> None:
        body = {**chat("hangs"), "stream": True, "max_tokens": 2000}
        try:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body,
                              timeout=30) as r:
                text = "".join(r.iter_text())
                outcomes.append("complete" if "[DONE]" in text else f"cut: {text[-200:]}")
        except httpx.HTTPError as exc:
            outcomes.append(f"error: {exc!r}")

    clients = [threading.Thread(target=stream) for _ in range(3)]
    for client in clients:
        client.start()
    wait_until(lambda: gw.model("hangs")["in_flight"] == 3, 10, what="three streams in flight")
    started = time.monotonic()
    httpx.post(f"http://127.0.0.1:{before['port']}/fake/hang", timeout=5)
    for client in clients:
        client.join(30)
    took = time.monotonic() - started
    assert len(outcomes) == 3 and not any(o == "complete" for o in outcomes), outcomes
    # Two failed probes 0.3 s apart, then the kill; the streams would have run for 100 s.
    assert took < 10, f"the in-flight requests took {took:.1f} s to end"
    assert gw.model("hangs")["in_flight"] == 0
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat("hangs"), timeout=30)
    assert r.status_code == 200
    assert gw.model("hangs")["pid"] != before["pid"]
