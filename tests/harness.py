"""Run a real gateway process on a loopback port, with fake backends as real processes.

Shared by every integration suite (fast, vLLM, Docker, browser).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from helpers import free_port, metric, scrape, wait_until

PY = sys.executable


def fake_command(*extra: str, worker: bool = True, startup_delay: float = 0.0) -> list[str]:
    """The command of a model served by the fake backend (a vLLM look-alike); it listens as
    soon as it has imported, unless a test asks for a loading time."""
    cmd = [PY, "-m", "fake_vllm", "--port", "{port}", "--served-model-name",
           "{name}", "--startup-delay", str(startup_delay)]
    if not worker:
        cmd.append("--no-worker")
    return cmd + list(extra)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@dataclass
class GatewayProc:
    config_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(self.url + "/gateway/status", timeout=10).json()
        return doc

    def model(self, name: str) -> dict[str, Any]:
        for m in self.status()["models"]:
            if m["name"] == name:
                return dict(m)
        raise KeyError(name)

    def metric(self, name: str, **labels: str) -> float:
        """One series of ``/metrics`` (summed over other labels); 0 when it is not there."""
        return metric(scrape(self.url, timeout=10), name, **labels)

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            model = self.model(name)
            return model if model["state"] == state else None

        found: dict[str, Any] = wait_until(reached, timeout, what=f"model {name} to be {state}")
        return found

    def wait_counters_zero(self, timeout: float = 20.0) -> None:
        wait_until(lambda: all(m["in_flight"] == 0 and m["queued"] == 0
                               for m in self.status()["models"]),
                   timeout, what="in_flight and queued back to 0")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def model_pids(self) -> list[int]:
        return [p.pid for p in descendants(self.proc.pid)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


# The conftest's ``gateway`` fixture: start a real gateway for these models and keys.
Start = Callable[..., GatewayProc]


def stop_leaving_nothing(gw: GatewayProc) -> None:
    """SIGTERM the gateway and fail if any process it started outlives it."""
    children: list[psutil.Process] = []
    try:
        children = psutil.Process(gw.proc.pid).children(recursive=True)
    except psutil.Error:
        pass
    gw.stop()
    _, alive = psutil.wait_procs(children, timeout=15)
    for proc in alive:
        proc.kill()
    assert not alive, f"processes left behind by the gateway: {alive}"


def write_config(path: Path, models: dict[str, Any], **top: Any) -> Path:
    doc: dict[str, Any] = {"models": models}
    doc.update(top)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_gateway(tmp_path: Path, models: dict[str, Any], *, env: dict[str, str] | None = None,
                  args: list[str] | None = None, wait: bool = True, **top: Any) -> GatewayProc:
    top["server"] = {"host": "127.0.0.1", "port": free_port(), "shutdown_timeout_s": 10,
                     **top.get("server", {})}
    port = int(top["server"]["port"])
    top.setdefault("state_dir", str(tmp_path / "state"))
    config = write_config(tmp_path / f"gateway-{port}.yaml", models, **top)
    log_path = tmp_path / f"gateway-{port}.log"
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("GATEWAY_", "VLLM_INACTIVITY", "VLLM_REQUEST", "TOTAL_GPU",
                                     "ALLOWED_MODELS"))}
    full_env.update({"PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"})
    full_env.update(env or {})
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([PY, "-m", "vllm_gateway.cli", "serve", "--config", str(config),
                                 *(args or [])], stdout=out, stderr=subprocess.STDOUT, env=full_env)
    gw = GatewayProc(config, port, proc, log_path, full_env)
    if wait:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}:\n{gw.log()}")
            try:
                return httpx.get(gw.url + "/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, 90, what="gateway ready")
    return gw


def chat(model: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


def sse_events(text: str) -> list[Any]:
    events = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events
