"""Prometheus metrics on the app's own registry (no global state, many apps per process).

Counters and histograms are updated where things happen; gauges that mirror
live state (in-flight, queued, model state, GPU memory) are read at scrape
time from their one owner, so they can never drift from what status shows.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .lifecycle import State

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAKE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60)
START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
# Primed at zero for dashboards; "sleep_timeout" (a sleeper stopped for good) appears once seen.
EVICTION_REASONS = ("lru", "idle", "manual")
TOKEN_KINDS = ("prompt", "completion")
RECENT_WINDOW_S = 3600.0
# Per model; a busier model's rate and p95 then cover the last RECENT_MAX requests only.
RECENT_MAX = 4096


class RecentRequests:
    """The last requests of each model (end time, duration), for the status document.

    Bounded per model, so a busy model costs the same memory as a quiet one; the
    summary is computed when asked for (a status poll), not on the request path.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 window_s: float = RECENT_WINDOW_S, maxlen: int = RECENT_MAX) -> None:
        self._clock = clock
        self._window_s = window_s
        self._maxlen = maxlen
        self._since = clock()
        self._by_model: dict[str, deque[tuple[float, float]]] = {}

    def add(self, model: str, duration_s: float) -> None:
        window = self._by_model.get(model)
        if window is None:
            window = self._by_model[model] = deque(maxlen=self._maxlen)
        window.append((self._clock(), duration_s))

    def summary(self, model: str) -> dict[str, float | None]:
        """``requests_per_min`` and ``p95_s`` over the last hour (p95 None without requests)."""
        now = self._clock()
        start = now - self._window_s
        window = self._by_model.get(model, deque())
        recent = [d for t, d in window if t >= start]
        if len(window) == self._maxlen and window[0][0] > start:
            # A full window has seen only the span since its oldest entry.
            span_s = max(now - window[0][0], 1.0)
        else:
            # A gateway up for five minutes has seen five minutes, not an hour; the floor
            # keeps its first request from reading as 60 a minute.
            span_s = max(now - max(start, self._since), 60.0)
        span_min = span_s / 60.0
        p95: float | None = None
        if recent:
            recent.sort()
            p95 = round(recent[max(math.ceil(0.95 * len(recent)) - 1, 0)], 3)
        return {"requests_per_min": round(len(recent) / span_min, 2), "p95_s": p95}


class LiveCollector(Collector):
    """Gauges read at scrape time from a snapshot function."""

    def __init__(self, snapshot: Callable[[], dict[str, object]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        models = snap.get("models", [])
        gpus = snap.get("gpus", [])
        assert isinstance(models, list) and isinstance(gpus, list)
        in_flight = GaugeMetricFamily("vllm_gateway_requests_in_flight",
                                      "Requests being served by the backend", labels=["model"])
        queued = GaugeMetricFamily("vllm_gateway_requests_queued",
                                   "Requests waiting for a slot or for the model to start",
                                   labels=["model"])
        state = GaugeMetricFamily("vllm_gateway_model_state",
                                  "1 for the state the model is in, 0 for the others",
                                  labels=["model", "state"])
        replica_in_flight = GaugeMetricFamily(
            "vllm_gateway_replica_requests_in_flight",
            "Requests being served by each replica that holds memory", labels=["model", "replica"])
        for m in models:
            in_flight.add_metric([m["name"]], m["in_flight"])
            queued.add_metric([m["name"]], m["queued"])
            for s in State:
                state.add_metric([m["name"], s.value], 1.0 if m["state"] == s.value else 0.0)
            for r in m.get("replicas") or []:
                replica_in_flight.add_metric([m["name"], str(r["replica"])], r["in_flight"])
        total = GaugeMetricFamily("vllm_gateway_gpu_memory_total_gb", "GPU memory", labels=["gpu"])
        placed = GaugeMetricFamily("vllm_gateway_gpu_memory_placed_gb",
                                   "GPU memory placed by the gateway", labels=["gpu"])
        driver = GaugeMetricFamily("vllm_gateway_gpu_memory_driver_used_gb",
                                   "GPU memory in use as the NVIDIA driver reports it", labels=["gpu"])
        for g in gpus:
            total.add_metric([str(g["id"])], g["vram_gb"])
            placed.add_metric([str(g["id"])], g["used_gb"])
            if g.get("driver_used_gb") is not None:
                driver.add_metric([str(g["id"])], g["driver_used_gb"])
        host = snap.get("host_memory")
        host_used = GaugeMetricFamily("vllm_gateway_host_memory_used_gb",
                                      "Host RAM held by models asleep at level 1")
        if isinstance(host, dict):
            host_used.add_metric([], float(host.get("used_gb") or 0.0))
        yield from (in_flight, queued, state, replica_in_flight, total, placed, driver, host_used)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vllm_gateway_requests", "Requests answered, by HTTP status",
                                ["model", "code"], registry=r)
        self.queue_wait = Histogram("vllm_gateway_queue_wait_seconds",
                                    "Time from arrival to a backend slot (includes model start)",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("vllm_gateway_time_to_first_byte_seconds",
                              "Time from arrival to the first byte of the answer",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("vllm_gateway_request_duration_seconds",
                                  "Time from arrival to the end of the answer",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("vllm_gateway_tokens", "Tokens reported by backends in usage",
                              ["model", "kind"], registry=r)
        self.starts = Counter("vllm_gateway_model_starts", "Model server starts", ["model"],
                              registry=r)
        self.replica_starts = Counter("vllm_gateway_replica_starts",
                                      "Model server starts, by replica (0 is the first)",
                                      ["model", "replica"], registry=r)
        self.start_seconds = Histogram("vllm_gateway_model_start_seconds",
                                       "Time from launch to healthy", ["model"],
                                       buckets=START_BUCKETS, registry=r)
        self.failures = Counter("vllm_gateway_model_failures",
                                "Failed starts and crashes of model servers", ["model"], registry=r)
        self.evictions = Counter("vllm_gateway_model_evictions",
                                 "Models stopped by the gateway, by reason (lru, idle, manual)",
                                 ["model", "reason"], registry=r)
        self.sleeps = Counter("vllm_gateway_sleeps", "Models put to sleep, by level",
                              ["model", "level"], registry=r)
        self.wakes = Counter("vllm_gateway_wakes", "Models woken from sleep", ["model"],
                             registry=r)
        self.wake_seconds = Histogram("vllm_gateway_wake_seconds",
                                      "Time from the wake decision to ready", ["model"],
                                      buckets=WAKE_BUCKETS, registry=r)
        self.wake_check_failures = Counter(
            "vllm_gateway_wake_check_failures",
            "Wakes whose check answer differed from the one after the cold start", ["model"],
            registry=r)
        self.retries = Counter("vllm_gateway_retries", "Requests retried before reaching a backend",
                               ["model"], registry=r)
        ProcessCollector(namespace="vllm_gateway", registry=r)
        # Label lookups cost a lock and a tuple per call; the proxy path reuses the children.
        self._by_code: dict[tuple[str, int], Any] = {}
        self._by_kind: dict[tuple[str, str], Any] = {}
        self._by_model: dict[str, tuple[Any, Any, Any]] = {}
        self.recent = RecentRequests()

    def _model_children(self, model: str) -> tuple[Any, Any, Any]:
        children = self._by_model.get(model)
        if children is None:
            children = (self.duration.labels(model), self.ttfb.labels(model),
                        self.queue_wait.labels(model))
            self._by_model[model] = children
        return children

    def count_tokens(self, model: str, kind: str, n: int) -> None:
        child = self._by_kind.get((model, kind))
        if child is None:
            child = self._by_kind[(model, kind)] = self.tokens.labels(model, kind)
        child.inc(n)

    def waited(self, model: str, seconds: float) -> None:
        self._model_children(model)[2].observe(seconds)

    def request_done(self, model: str, code: int, duration_s: float, ttfb_s: float | None) -> None:
        counter = self._by_code.get((model, code))
        if counter is None:
            counter = self._by_code[(model, code)] = self.requests.labels(model, str(code))
        counter.inc()
        if model:
            self.recent.add(model, duration_s)
            duration, ttfb, _ = self._model_children(model)
            duration.observe(duration_s)
            if ttfb_s is not None:
                ttfb.observe(ttfb_s)

    def watch(self, snapshot: Callable[[], dict[str, object]]) -> None:
        self.registry.register(LiveCollector(snapshot))

    def prime(self, models: Iterable[str]) -> None:
        """Create the per-model series at zero so dashboards see them before traffic.

        Prometheus' ``increase()`` cannot see the first increment of a series that
        appears with value 1, so a rare event (one eviction, one failure) would never
        show on a dashboard unless its series already existed at zero.
        """
        for name in models:
            self.starts.labels(name)
            self.replica_starts.labels(name, "0")
            self.failures.labels(name)
            self.retries.labels(name)
            self.wakes.labels(name)
            self.wake_check_failures.labels(name)
            for reason in EVICTION_REASONS:
                self.evictions.labels(name, reason)
            for kind in TOKEN_KINDS:
                self.tokens.labels(name, kind)
