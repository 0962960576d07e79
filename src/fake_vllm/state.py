"""Everything one fake server knows, hung off its aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .engine import Engine
from .lora import Adapters
from .options import Settings
from .payloads import Payloads


@dataclass
class Stats:
    in_flight: int = 0
    max_in_flight: int = 0
    # Generation requests received, whatever their outcome.
    requests: int = 0
    # Generation requests the client abandoned before the answer was complete.
    disconnects: int = 0
    # Generation requests answered in full with 200.
    completed: int = 0


@dataclass
class BackendState:
    settings: Settings
    payloads: Payloads
    engine: Engine
    adapters: Adapters
    stats: Stats = field(default_factory=Stats)
    # Lifetime count for --crash-after; /fake/reset_stats leaves it alone.
    generations_seen: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0})
    last_request: dict[str, Any] | None = None
    health_hung: bool = False
    worker_pid: int | None = None


STATE = web.AppKey("state", BackendState)
JSON = "application/json"
