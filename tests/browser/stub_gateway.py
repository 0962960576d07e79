"""A stand-in for the gateway's status endpoints, with canned models and GPUs.

It lets the dashboard's rendering and its admin-key flow be tested without
starting model servers: load/unload only move a model through
starting -> ready and stopping -> stopped on short timers.

Run it by hand to look at the page:
``python tests/browser/stub_gateway.py --port 8400 [--admin-key KEY]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

DASHBOARD = Path(__file__).resolve().parents[2] / "src" / "vllm_gateway" / "static" / "dashboard.html"


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

    def as_json(self, port: int) -> dict[str, Any]:
        running = self.state == "ready"
        return {
            "name": self.name,
            "state": self.state,
            "vram_gb": self.vram_gb,
            "gpus": self.gpus if self.state in ("starting", "ready", "stopping") else [],
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
            "error": self.error,
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
                  last_used=now - 4, last_start_s=41.7, kv=0.37),
        StubModel("qwen2.5-coder-7b", 16, [0], state="starting", started_at=now - 12.4),
        StubModel("mistral-7b", 16, [1], state="ready", queued=0, last_used=now - 380,
                  last_start_s=35.2, kv=0.04, max_concurrent=16),
        StubModel("bge-m3", 4, [1], last_used=now - 3000, last_start_s=8.9),
        StubModel("phi-4", 30, [1], state="failed",
                  error="server exited with code 1 during start (CUDA out of memory)"),
    ]


class StubGateway:
    def __init__(self, admin_key: str | None = None, models: list[StubModel] | None = None,
                 gpu_vram_gb: tuple[float, ...] = (40.0, 40.0), transition_s: float = 0.6) -> None:
        self.admin_key = admin_key
        self.models = {m.name: m for m in (models if models is not None else demo_models())}
        self.gpu_vram_gb = gpu_vram_gb
        self.transition_s = transition_s
        self.events: list[dict[str, Any]] = []
        self.load_calls: list[str | None] = []  # the Authorization header of each load/unload
        self.status_calls = 0
        for m in self.models.values():
            if m.state != "stopped":
                self._event(m.name, "starting", "starting on GPU " + ",".join(map(str, m.gpus)))
            if m.state == "ready":
                self._event(m.name, "ready", f"ready after {m.last_start_s} s")
            if m.state == "failed":
                self._event(m.name, "failed", m.error or "failed")

    def _event(self, model: str, kind: str, message: str) -> None:
        seq = len(self.events) + 1
        self.events.append({"seq": seq, "time": time.time(), "model": model, "kind": kind,
                            "message": message})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_get("/gateway/ui", self.page)
        app.router.add_get("/gateway/status", self.status)
        app.router.add_get("/gateway/events", self.list_events)
        app.router.add_post("/gateway/models/{name}/{action:load|unload}", self.action)
        return app

    async def page(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(DASHBOARD)

    async def status(self, _: web.Request) -> web.Response:
        self.status_calls += 1
        gpus = []
        for gid, vram in enumerate(self.gpu_vram_gb):
            used = sum(m.vram_gb for m in self.models.values()
                       if m.state in ("starting", "ready", "stopping") and gid in m.gpus)
            gpus.append({"id": gid, "vram_gb": vram, "used_gb": used,
                         "driver_used_gb": round(used * 1.04 + 0.4, 1) if used else 0.4})
        models = [m.as_json(41000 + i) for i, m in enumerate(self.models.values())]
        return web.json_response({"gpus": gpus, "models": models})

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
        if request.match_info["action"] == "load" and model.state in ("stopped", "failed"):
            model.state, model.started_at, model.error = "starting", time.time(), None
            self._event(model.name, "starting", "load requested")
            loop.call_later(self.transition_s, self._finish, model.name, "ready")
        elif request.match_info["action"] == "unload" and model.state in ("starting", "ready"):
            model.state = "stopping"
            loop.call_later(self.transition_s, self._finish, model.name, "stopped")
        return web.json_response({"name": model.name, "state": model.state})

    def _finish(self, name: str, state: str) -> None:
        model = self.models[name]
        model.state = state
        if state == "ready" and model.started_at is not None:
            model.last_start_s = time.time() - model.started_at
            self._event(name, "ready", f"ready after {model.last_start_s:.1f} s")
        else:
            self._event(name, "stopped", "unloaded on request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--admin-key")
    args = parser.parse_args()
    web.run_app(StubGateway(args.admin_key).app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
