"""The gateway as a real process for one configuration, and what it tells about itself.

The gateway runs ``vllm-gateway serve --config`` in its own process group (via
:class:`bench.procs.Processes`, so its model servers go with it). Its counters
are read from ``/metrics``; its GPUs and models are polled from
``/gateway/status`` during the replay, which is where over-commitment would show.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..procs import LOOPBACK, Child, ChildFailed, Processes, free_port, port_open
from . import costs

# Memory a model holds in each state (sleeping: its residual, read from status where known).
FULL_STATES = frozenset({"starting", "ready", "draining", "stopping", "waking", "unhealthy"})
READY_TIMEOUT_S = 60.0
# The environment of the shell running the bench must not change the gateway it measures.
_FOREIGN_ENV = ("GATEWAY_", "VLLM_INACTIVITY", "VLLM_REQUEST", "TOTAL_GPU", "ALLOWED_MODELS")


class ConfigRejected(RuntimeError):
    """The gateway refused the configuration (a key it does not know yet, say)."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    env.update({"PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"})
    return env


def write_config(doc: dict[str, Any], workdir: Path, name: str) -> tuple[Path, int]:
    port = free_port()
    full = {"server": {"host": LOOPBACK, "port": port, "shutdown_timeout_s": 5},
            "state_dir": str(workdir / f"state-{name}"), **doc}
    path = workdir / f"gateway-{name}.yaml"
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path, port


def check_config(path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "vllm_gateway.cli", "check-config", str(path)],
                          capture_output=True, text=True, env=_env(), timeout=60, check=False)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines()
        raise ConfigRejected("; ".join(line.strip() for line in lines[-4:]))


def start(procs: Processes, path: Path, port: int, name: str) -> Child:
    child = procs.spawn(f"gateway-{name}",
                        [sys.executable, "-m", "vllm_gateway.cli", "serve", "--config", str(path)],
                        env=_env())
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise ChildFailed(f"the gateway exited with {child.popen.returncode}:\n"
                              f"{child.log_tail()}")
        if port_open(port):
            return child
        time.sleep(0.05)
    raise ChildFailed(f"the gateway did not listen in {READY_TIMEOUT_S:g} s:\n{child.log_tail()}")


@dataclass
class Watch:
    """What polling ``/gateway/status`` saw: the worst GPU and model figures, and load times."""

    polls: int = 0
    overcommits: list[str] = field(default_factory=list)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    # (wall time, model, expected_load_s) whenever a model's expected load time changed
    expected_load: list[tuple[float, str, float | None]] = field(default_factory=list)
    sleep_enabled: set[str] = field(default_factory=set)  # models whose status shows sleep on
    # The gateway's own used_gb read over a GPU while only a wake's claim was ahead of the room
    # being made (the waking server still asleep): its accounting, not the card, went over.
    accounting: list[str] = field(default_factory=list)
    sleep_residual_gb: float = costs.SLEEP_RESIDUAL_GB

    def check(self, status: dict[str, Any], max_concurrent: int,
              still_asleep: frozenset[str] = frozenset()) -> None:
        """``still_asleep``: waking models whose servers have not begun to wake (hold only
        their residual)."""
        self.polls += 1
        placed: dict[object, float] = {}
        early: dict[object, float] = {}  # per GPU: what the gateway counts before the wake began
        for model in status.get("models", []):
            name = str(model["name"])
            self._expected(name, model.get("expected_load_s"))
            in_flight = int(model.get("in_flight") or 0)
            self.max_in_flight[name] = max(self.max_in_flight.get(name, 0), in_flight)
            if in_flight > max_concurrent:
                self.overcommits.append(f"{name}: {in_flight} in flight > {max_concurrent}")
            if model.get("sleep"):
                self.sleep_enabled.add(name)
            state = model.get("state")
            # What holds GPU memory is a live server process; a start waiting for its room
            # has none yet, and a stopped server's shows until its group is gone.
            live = _alive(model.get("pid"))
            full = state in FULL_STATES and live and name not in still_asleep
            held = float(model.get("vram_gb") or 0) if full else 0.0
            for gpu in model.get("gpus") or []:
                placed[gpu] = placed.get(gpu, 0.0) + held
                if name in still_asleep and state == "waking":
                    early[gpu] = (early.get(gpu, 0.0) + float(model.get("vram_gb") or 0)
                                  - self.sleep_residual_gb)
        for gpu in status.get("gpus", []):
            total, gid = float(gpu["vram_gb"]), gpu["id"]
            used = float(gpu.get("used_gb") or 0)
            for what, value in (("used_gb", used - early.get(gid, 0.0)),
                                ("models placed", placed.get(gid, 0.0))):
                if value > total + 1e-6:
                    self.overcommits.append(f"GPU {gid}: {what} {value:g} > {total:g} GB "
                                            f"({_holders(status, gid)})")
            if used > total + 1e-6 and used - early.get(gid, 0.0) <= total + 1e-6:
                self.accounting.append(f"GPU {gid}: used_gb {used:g} > {total:g} GB while a "
                                       f"wake waited for its room ({_holders(status, gid)})")

    def _expected(self, name: str, value: object) -> None:
        current = float(value) if isinstance(value, (int, float)) else None
        last = next((e for _, m, e in reversed(self.expected_load) if m == name), "unset")
        if last != current:
            self.expected_load.append((time.monotonic(), name, current))

    def expected_at(self, name: str, when: float) -> float | None:
        """The model's expected load time (wall seconds) as last seen before ``when``."""
        found: float | None = None
        for at, model, value in self.expected_load:
            if model == name and at <= when:
                found = value
        return found


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _holders(status: dict[str, Any], gpu: object) -> str:
    return ", ".join(f"{m['name']} {m.get('state')} pid {m.get('pid')} "
                     f"{'alive' if _alive(m.get('pid')) else 'gone'} {m.get('vram_gb')}"
                     for m in status.get("models", []) if gpu in (m.get("gpus") or []))


async def poll_status(base_url: str, watch: Watch, max_concurrent: int, interval_s: float,
                      stop: asyncio.Event) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            try:
                async with session.get(f"{base_url}/gateway/status") as resp:
                    status = await resp.json()
                watch.check(status, max_concurrent, await _still_asleep(session, status))
            except (TimeoutError, aiohttp.ClientError, ValueError):
                pass  # a missed poll is not a finding; the next one comes soon
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass


async def _still_asleep(session: aiohttp.ClientSession, status: dict[str, Any]) -> frozenset[str]:
    """Waking or stopping models whose servers are asleep (a wake not begun, or a sleeper
    being stopped: status gives its sleep_level until it is gone): they hold only their
    residual."""
    found = set()
    for model in status.get("models", []):
        name, state = str(model["name"]), model.get("state")
        if state == "stopping" and model.get("sleep_level"):
            found.add(name)
        if state != "waking" or not model.get("port"):
            continue
        try:
            async with session.get(f"http://{LOOPBACK}:{model['port']}/fake/stats") as resp:
                if (await resp.json()).get("resident") is False:
                    found.add(name)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            continue  # unknown: counted in full
    return frozenset(found)


def read_metrics(base_url: str) -> dict[str, dict[str, float]]:
    """Per model: cold starts, wakes, sleeps, and seconds spent starting and waking (wall)."""
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    wanted = {
        "vllm_gateway_model_starts_total": "starts",
        "vllm_gateway_model_start_seconds_sum": "start_s",
        "vllm_gateway_wakes_total": "wakes",
        "vllm_gateway_wake_seconds_sum": "wake_s",
        "vllm_gateway_sleeps_total": "sleeps",
        "vllm_gateway_model_evictions_total": "evictions",
        "vllm_gateway_model_failures_total": "failures",
    }
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            model = sample.labels.get("model")
            if key is None or not model:
                continue
            per = out.setdefault(model, {})
            per[key] = per.get(key, 0.0) + float(sample.value)
    return out
