"""Serving one workload with one configuration, from config file to summary row."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..procs import ChildFailed, Processes, free_port, wait_port
from . import gateway
from .configs import MAX_CONCURRENT, Backend, Configuration
from .replay import Record, replay
from .summary import Observed, problems, summarize
from .workloads import Workload

BACKEND_MODULES = ("fake_vllm", "vllm_gateway.fake_backend")
STATUS_POLL_S = 0.05
# After the replay's own expected length: how long the stragglers may take, in wall seconds.
GRACE_S = 120.0


def detect_backend(procs: Processes, startup_timeout_s: float) -> Backend:
    """The fake backend that is installed, whether it has sleep delays, its bare start-up time."""
    module = next((m for m in BACKEND_MODULES if importlib.util.find_spec(m.split(".")[0])
                   and importlib.util.find_spec(m)), None)
    if module is None:
        raise ChildFailed(f"no fake backend installed (tried {', '.join(BACKEND_MODULES)})")
    help_text = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                               text=True, timeout=60, check=False).stdout
    starts = []
    for attempt in range(3):
        port = free_port()
        began = time.monotonic()
        child = procs.spawn(f"backend-probe-{attempt}",
                            [sys.executable, "-m", module, "--port", str(port), "--no-worker",
                             "--startup-delay", "0"])
        try:
            wait_port(child, port, 60.0)
            starts.append(time.monotonic() - began)
        finally:
            procs.stop(child)
    return Backend(module, "--sleep-delay" in help_text and "--wake-delay" in help_text,
                   statistics.median(starts), startup_timeout_s)


def _sleep_ignored(config: Configuration, enabled: set[str]) -> str:
    if config.name == "sleep" and not enabled:
        return "the gateway accepted sleep: 1 but its status shows sleep off"
    return ""


def run_one(workload: Workload, config: Configuration, backend: Backend, scale: float,
            workdir: Path, procs: Processes) -> dict[str, Any]:
    doc = config.build(workload, backend, scale)
    path, port = gateway.write_config(doc, workdir, f"{workload.name}-{config.name}")
    try:
        gateway.check_config(path)
    except gateway.ConfigRejected as exc:
        return {"status": "not available yet", "note": f"the gateway refused it: {exc}"}
    if config.name == "sleep" and not backend.sleep_options:
        return {"status": "not available yet",
                "note": f"the fake backend ({backend.module}) has no --sleep-delay/--wake-delay"}
    child = gateway.start(procs, path, port, f"{workload.name}-{config.name}")
    base_url = f"http://127.0.0.1:{port}"
    watch = gateway.Watch()
    expected_wall = max(s.start_s for s in workload.sessions) / scale
    try:
        t0, records = asyncio.run(_serve(workload, base_url, scale, watch,
                                         expected_wall * 3 + GRACE_S))
        metrics = gateway.read_metrics(base_url)
    finally:
        procs.stop(child, grace_s=10.0)

    def expected_load(model: str, sent: float) -> float | None:
        return watch.expected_at(model, t0 + sent)

    observed = Observed(metrics, watch.overcommits, watch.polls, expected_load, watch.accounting)
    row = summarize(workload, records, observed, scale, config.bounded, backend.startup_timeout_s)
    ignored = _sleep_ignored(config, watch.sleep_enabled)
    row.update({"status": "ok" if not ignored else "not available yet", "note": ignored,
                "max_in_flight": watch.max_in_flight, "metrics": metrics})
    if problems(row):
        print(f"[trace] the gateway's last output:\n{child.log_tail(8)}", flush=True)
    return row


async def _serve(workload: Workload, base_url: str, scale: float, watch: gateway.Watch,
                 timeout_s: float) -> tuple[float, list[Record]]:
    stop = asyncio.Event()
    poller = asyncio.create_task(gateway.poll_status(base_url, watch, MAX_CONCURRENT,
                                                     STATUS_POLL_S, stop))
    records: list[Record] = []
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(replay(workload, base_url, scale, timeout_s, t0, records),
                               timeout_s)
    except TimeoutError:
        for record in records:
            if record.end is None:
                record.error = f"no answer within the replay's {timeout_s:.0f} s"
    finally:
        stop.set()
        await poller
    return t0, records
