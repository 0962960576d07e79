"""A stand-in for the gateway's status endpoints, with canned models and GPUs.

It lets the dashboard's rendering and its admin-key flow be tested without
starting model servers: load/unload/sleep only move a model through
starting -> ready, stopping -> stopped and draining -> sleeping on short timers.
``swap_demo()`` is a GPU shared by models in every state, with an hour of
events behind it (one model swapping in and out every few minutes).

Run it by hand to look at the page:
``python tests/browser/stub_gateway.py --port 8400 [--admin-key KEY] [--swaps]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from vllm_gateway.web.middleware import errors_middleware
from vllm_gateway.web.ops import add_dashboard_routes

# States in which a model holds GPU memory (a sleeper only SLEEP_VRAM_GB of it).
HOLDS = ("starting", "ready", "draining", "sleeping", "waking", "stopping")
SLEEP_VRAM_GB = 1.0
HOST_TOTAL_GB = 115.2


@dataclass
class StubModel:
    name: str
    vram_gb: float
    gpus: list[int]
    state: str = "stopped"
    aliases: list[str] = field(default_factory=list)
    in_flight: int = 0
    queued: int = 0
    max_concurrent: int = 50
    max_queue: int = 200
    last_used: float | None = None
    started_at: float | None = None
    last_start_s: float | None = None
    error: str | None = None
    kv: float | None = None
    sleep: int | None = None
    sleep_level: int | None = None
    asleep_since: float | None = None
    last_wake_s: float | None = None
    expected_load_s: float | None = None
    wake_check_failures: int = 0
    node: str | None = None
    retry_at: float | None = None
    failed_starts: int = 0
    adapters: list[dict[str, Any]] | None = None  # loaded LoRA adapters; None: none configured
    recent: dict[str, float | None] = field(
        default_factory=lambda: {"requests_per_min": 0.0, "p95_s": None})

    def held_gb(self) -> float:
        if self.state not in HOLDS:
            return 0.0
        return SLEEP_VRAM_GB if self.state == "sleeping" else self.vram_gb

    def as_json(self, port: int) -> dict[str, Any]:
        running = self.state == "ready"
        now = time.time()
        return {
            "name": self.name,
            "state": self.state,
            "vram_gb": self.vram_gb,
            "gpus": self.gpus if self.state in HOLDS else [],
            "in_flight": self.in_flight,
            "queued": self.queued,
            "last_used": self.last_used,
            "port": port if running else None,
            "pid": 4000 + port % 1000 if running else None,
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
            "aliases": self.aliases,
            "starting_for_s": (
                time.time() - self.started_at
                if self.state == "starting" and self.started_at
                else None
            ),
            "last_start_s": self.last_start_s,
            "expected_load_s": self.expected_load_s,
            "error": self.error,
            "failed_starts": self.failed_starts,
            "retry_in_s": round(max(self.retry_at - now, 0.0), 1)
            if self.state == "backoff" and self.retry_at else None,
            "sleep": self.sleep,
            "sleep_level": self.sleep_level if self.state == "sleeping" else None,
            "asleep_for_s": round(now - self.asleep_since, 1)
            if self.state == "sleeping" and self.asleep_since else None,
            "last_wake_s": self.last_wake_s,
            "wake_check_failures": self.wake_check_failures,
            "node": self.node,
            "recent": self.recent,
            "adapters": self.adapters if self.adapters is None or running else [],
            "backend": (
                {
                    "num_requests_running": self.in_flight,
                    "num_requests_waiting": 0,
                    "kv_cache_usage_perc": self.kv,
                }
                if running and self.kv is not None
                else None
            ),
        }


def demo_models() -> list[StubModel]:
    now = time.time()
    return [
        StubModel("llama-3.1-8b", 18, [0], state="ready", aliases=["llama"], in_flight=3,
                  last_used=now - 4, last_start_s=41.7, kv=0.37,
                  adapters=[{"name": "chat", "last_used": now - 90, "in_flight": 0},
                            {"name": "sql", "last_used": now - 4, "in_flight": 2}]),
        StubModel("qwen2.5-coder-7b", 16, [0], state="starting", started_at=now - 12.4),
        StubModel("mistral-7b", 16, [1], state="ready", queued=0, last_used=now - 380,
                  last_start_s=35.2, kv=0.04, max_concurrent=16),
        StubModel("bge-m3", 4, [1], last_used=now - 3000, last_start_s=8.9),
        StubModel("phi-4", 30, [1], state="failed",
                  error="server exited with code 1 during start (CUDA out of memory)"),
    ]


# (minutes ago, model, kind, message): what a gateway would have logged.
History = list[tuple[float, str, str, str]]


def swap_demo() -> tuple[list[StubModel], History]:
    """Models in every new state on one 48 GB GPU, and the hour that led there.

    ``coder`` is the thrashing one: started and evicted for room five times.
    """
    now = time.time()
    models = [
        StubModel("chat-70b-awq", 24, [0], state="ready", in_flight=2, last_used=now - 2,
                  last_start_s=48.2, kv=0.52, sleep=1, last_wake_s=0.4, node="gpu-a",
                  recent={"requests_per_min": 14.2, "p95_s": 3.8}),
        StubModel("coder", 16, [0], state="draining", in_flight=1, last_used=now - 1,
                  last_start_s=31.0, node="gpu-a",
                  recent={"requests_per_min": 2.3, "p95_s": 41.5}),
        StubModel("writer", 16, [0], state="sleeping", sleep=1, sleep_level=1,
                  asleep_since=now - 600, last_used=now - 640, last_start_s=29.5,
                  last_wake_s=0.3, wake_check_failures=1, node="gpu-a",
                  recent={"requests_per_min": 0.4, "p95_s": 1.2}),
        StubModel("summarizer", 6, [0], state="waking", sleep=2, expected_load_s=1.8,
                  last_used=now, node="gpu-a", recent={"requests_per_min": 0.2, "p95_s": 2.6}),
        StubModel("vision", 20, [], state="backoff", retry_at=now + 25, failed_starts=2,
                  error="server exited with code 1 during start (CUDA out of memory)"),
        StubModel("broken-7b", 14, [], state="held", failed_starts=5,
                  error="server exited with code 2 during start (unknown model type)"),
        StubModel("embed", 4, [], last_used=now - 3000, last_start_s=8.9),
    ]
    history: History = [(58, "chat-70b-awq", "starting", "on port 41001, GPUs [0]"),
                        (57, "chat-70b-awq", "ready", "in 48.20 s")]
    for start in (55, 44, 33, 22, 11):
        history += [(start, "coder", "starting", "on port 41002, GPUs [0]"),
                    (start - 0.5, "coder", "ready", "in 31.00 s"),
                    (start - 6, "coder", "evicted", "stopping (lru)"),
                    (start - 6.1, "coder", "stopped", "processes gone, memory released")]
    history += [(2, "coder", "starting", "on port 41002, GPUs [0]"),
                (1.5, "coder", "ready", "in 31.00 s"),
                (0.2, "coder", "draining", "pressed for room (lru), 1 request in flight"),
                (40, "writer", "starting", "on port 41003, GPUs [0]"),
                (39.5, "writer", "ready", "in 29.50 s"),
                (10.3, "writer", "draining", "going to sleep at level 1 (idle)"),
                (10, "writer", "asleep", "level 1 (idle), 16 GB in host RAM"),
                (30, "summarizer", "starting", "on port 41004, GPUs [0]"),
                (29.9, "summarizer", "ready", "in 6.00 s"),
                (20, "summarizer", "asleep", "level 2 (lru)"),
                (4, "vision", "starting", "on port 41005, GPUs [0]"),
                (3.8, "vision", "failed", "server exited with code 1; next try in 10 s"),
                (3.5, "vision", "starting", "on port 41005, GPUs [0]"),
                (3.3, "vision", "failed", "server exited with code 1; next try in 30 s")]
    for attempt in range(5):
        history += [(30 - attempt, "broken-7b", "starting", "on port 41006, GPUs [0]"),
                     (29.9 - attempt, "broken-7b", "failed", "server exited with code 2; "
                      + ("held after 5 failed starts" if attempt == 4 else "next try soon"))]
    return models, history


class StubGateway:
    def __init__(self, admin_key: str | None = None, models: list[StubModel] | None = None,
                 gpu_vram_gb: tuple[float, ...] = (40.0, 40.0), transition_s: float = 0.6,
                 history: History | None = None, gpu_nodes: tuple[str, ...] = ()) -> None:
        self.admin_key = admin_key
        self.models = {m.name: m for m in (models if models is not None else demo_models())}
        self.gpu_vram_gb = gpu_vram_gb
        self.gpu_nodes = gpu_nodes
        self.transition_s = transition_s
        self.events: list[dict[str, Any]] = []
        self.load_calls: list[str | None] = []  # the Authorization header of each admin call
        self.status_calls = 0
        if history is not None:
            now = time.time()
            for minutes, model, kind, message in sorted(history, key=lambda h: -h[0]):
                self._event(model, kind, message, at=now - 60 * minutes)
            return
        for m in self.models.values():
            if m.state != "stopped":
                self._event(m.name, "starting", "starting on GPU " + ",".join(map(str, m.gpus)))
            if m.state == "ready":
                self._event(m.name, "ready", f"ready after {m.last_start_s} s")
            if m.state == "failed":
                self._event(m.name, "failed", m.error or "failed")

    def _event(self, model: str, kind: str, message: str, at: float | None = None) -> None:
        seq = len(self.events) + 1
        self.events.append({"seq": seq, "time": time.time() if at is None else at,
                            "model": model, "kind": kind, "message": message})

    def app(self) -> web.Application:
        # The page and its files as the gateway serves them, its 404s included.
        app = web.Application(middlewares=[errors_middleware])
        add_dashboard_routes(app.router)
        app.router.add_get("/gateway/status", self.status)
        app.router.add_get("/gateway/events", self.list_events)
        app.router.add_post("/gateway/models/{name}/{action:load|unload|sleep}", self.action)
        return app

    async def status(self, _: web.Request) -> web.Response:
        self.status_calls += 1
        gpus = []
        for gid, vram in enumerate(self.gpu_vram_gb):
            used = sum(m.held_gb() for m in self.models.values() if gid in m.gpus)
            gpus.append({"id": gid, "vram_gb": vram, "used_gb": used,
                         "node": self.gpu_nodes[gid] if gid < len(self.gpu_nodes) else None,
                         "driver_used_gb": round(used * 1.04 + 0.4, 1) if used else 0.4})
        models = [m.as_json(41000 + i) for i, m in enumerate(self.models.values())]
        host = sum(m.vram_gb for m in self.models.values()
                   if m.state == "sleeping" and m.sleep_level == 1)
        return web.json_response({"gpus": gpus, "models": models,
                                  "host_memory": {"total_gb": HOST_TOTAL_GB, "used_gb": host}})

    async def list_events(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"events": [e for e in self.events if e["seq"] > since],
                                  "next": len(self.events)})

    async def action(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization")
        self.load_calls.append(header)
        if self.admin_key is not None:
            if header is None:
                return web.json_response({"error": {"message": "admin key needed"}}, status=401)
            if header != f"Bearer {self.admin_key}":
                return web.json_response({"error": {"message": "not an admin key"}}, status=403)
        model = self.models.get(request.match_info["name"])
        if model is None:
            return web.json_response({"error": {"message": "no such model"}}, status=404)
        loop = asyncio.get_running_loop()
        action = request.match_info["action"]
        if action == "sleep" and (not model.sleep or model.state != "ready"):
            why = "sleep is off" if not model.sleep else f"it is {model.state}, not ready"
            return web.json_response(
                {"error": {"message": f"cannot put {model.name} to sleep: {why}"}}, status=409)
        if action == "load" and model.state in ("stopped", "failed", "backoff", "held"):
            model.state, model.started_at, model.error = "starting", time.time(), None
            self._event(model.name, "starting", "load requested")
            loop.call_later(self.transition_s, self._finish, model.name, "ready")
        elif action == "unload" and model.state in ("starting", "ready", "draining", "sleeping",
                                                    "waking", "failed"):
            model.state = "stopping"
            self._event(model.name, "stopping", "stopping (manual)")
            loop.call_later(self.transition_s, self._finish, model.name, "stopped")
        elif action == "sleep":
            model.state = "draining"
            self._event(model.name, "draining", f"going to sleep at level {model.sleep} (manual)")
            loop.call_later(self.transition_s, self._finish, model.name, "sleeping")
        return web.json_response({"name": model.name, "state": model.state})

    def _finish(self, name: str, state: str) -> None:
        model = self.models[name]
        model.state = state
        if state == "sleeping":
            model.sleep_level, model.asleep_since = model.sleep, time.time()
            self._event(name, "asleep", f"level {model.sleep} (manual)")
        elif state == "ready" and model.started_at is not None:
            model.last_start_s = time.time() - model.started_at
            self._event(name, "ready", f"ready after {model.last_start_s:.1f} s")
        else:
            self._event(name, "stopped", "unloaded on request")


@asynccontextmanager
async def serving(gateway: StubGateway) -> AsyncIterator[str]:
    """The stand-in listening on a free loopback port; yields its URL."""
    runner = web.AppRunner(gateway.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--admin-key")
    parser.add_argument("--swaps", action="store_true", help="the swap_demo() models and history")
    args = parser.parse_args()
    models, history = swap_demo() if args.swaps else (None, None)
    stub = StubGateway(args.admin_key, models, gpu_vram_gb=(48.0,), history=history,
                       gpu_nodes=("gpu-a",)) if args.swaps else StubGateway(args.admin_key)
    web.run_app(stub.app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
