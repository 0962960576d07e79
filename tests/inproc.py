"""A whole gateway in the test's event loop, for scenarios that are about a rule, not a process.

``create_app(config, launchers=...)`` with :class:`InProcessLauncher`: each model
server is the fake backend's own aiohttp application (``fake_vllm.app.build_app``)
listening on the loopback port the gateway chose, in this same loop. The gateway
probes it, proxies and streams to it and stops it over the same code paths as a
real process, so placement, LRU order, FIFO, 429s and backoff are tested
without spawning anything; a :class:`ManualClock` moves backoff and idle time by
hand. Process groups, signals, crashes and orphans are tested with real
processes (harness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiohttp import web
from harness import fake_command
from helpers import HOST, free_port, scrape_async, wait_for

from fake_vllm.app import build_app
from fake_vllm.options import Settings, parse_settings
from fake_vllm.server import _log_loading, _print_failure
from vllm_gateway.config import load_config
from vllm_gateway.gateway import Gateway
from vllm_gateway.launchers.base import LaunchError, LaunchSpec, LocalServer
from vllm_gateway.launchers.subprocess import format_argv
from vllm_gateway.runtime.clock import Clock
from vllm_gateway.web.app import create_app
from vllm_gateway.web.keys import GATEWAY_KEY

# Handlers still running when a fake server stops get this long, as its process gives them.
SHUTDOWN_TIMEOUT_S = 0.5


def fake_model(*extra: str, **cfg: Any) -> dict[str, Any]:
    """A model served by the fake backend, ready at once (``--startup-delay 0``)."""
    return {"command": fake_command(*extra, worker=False, startup_delay=0.0), **cfg}


def _printed(write: Callable[..., None], *args: Any) -> list[str]:
    """What one of the fake backend's print functions writes, as log lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        write(*args)
    return out.getvalue().splitlines()


class InProcessServer(LocalServer):
    """One fake backend served from this loop; it loads, listens and stops as the process
    would, and its :attr:`app` is the same application the process serves."""

    def __init__(self, spec: LaunchSpec, settings: Settings, gate: asyncio.Event | None) -> None:
        super().__init__(spec.port)
        self.spec = spec
        self.settings = settings
        self.app: web.Application = build_app(settings)
        self._runner: web.AppRunner | None = None
        self._life = asyncio.create_task(self._run(gate))

    @property
    def pid(self) -> None:
        return None

    async def _run(self, gate: asyncio.Event | None) -> None:
        for line in _printed(_log_loading, self.settings):
            self._logs.append(line)
        if gate is not None:
            await gate.wait()
        else:
            await asyncio.sleep(self.settings.startup_delay)
        if self.settings.fail_start is not None:
            for line in _printed(_print_failure, self.settings.fail_start):
                self._logs.append(line)
            self._exited_with(1)
            return
        self._runner = web.AppRunner(self.app, handle_signals=False, handler_cancellation=True,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.spec.port).start()
        self._logs.append("INFO:     Application startup complete.")

    async def stop(self, grace_s: float) -> None:
        self._life.cancel()
        await asyncio.gather(self._life, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        self._exited_with(0)


class InProcessLauncher:
    """Starts :class:`InProcessServer` for models whose command runs ``fake_vllm``."""

    def __init__(self) -> None:
        self.servers: list[InProcessServer] = []
        self._gates: dict[str, asyncio.Event] = {}

    def hold(self, model: str) -> asyncio.Event:
        """Servers of ``model`` started from now on load until the event is set
        (instead of for their ``--startup-delay``)."""
        return self._gates.setdefault(model, asyncio.Event())

    def by_name(self, model: str) -> list[InProcessServer]:
        return [s for s in self.servers if s.spec.model.name == model]

    def running(self) -> list[InProcessServer]:
        return [s for s in self.servers if s.alive()]

    async def start(self, spec: LaunchSpec) -> InProcessServer:
        argv = format_argv(spec.model.command or (), spec.placeholders())
        if "fake_vllm" not in argv:
            raise LaunchError(f"in-process launcher: not a fake_vllm command: {argv}")
        settings = parse_settings(argv[argv.index("fake_vllm") + 1:], spec.env)
        if settings.crash_after is not None:
            # The fake crashes with os._exit, which would end the test run itself.
            raise LaunchError("in-process launcher: --crash-after needs a real process")
        server = InProcessServer(spec, settings, self._gates.get(spec.model.name))
        self.servers.append(server)
        return server

    async def cleanup_leftovers(self) -> list[str]:
        return []

    async def close(self) -> None:
        for server in self.running():
            await server.stop(0)


@dataclass
class InProcessGateway:
    """A started gateway on a loopback port; its async helpers read what a client reads."""

    url: str
    gateway: Gateway
    launcher: InProcessLauncher
    clock: Clock
    _runner: web.AppRunner = field(repr=False)

    def client(self, timeout: float = 60.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def status(self) -> dict[str, Any]:
        async with self.client(10) as c:
            doc: dict[str, Any] = (await c.get("/gateway/status")).json()
        return doc

    async def models(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in (await self.status())["models"]}

    async def model(self, name: str) -> dict[str, Any]:
        return (await self.models())[name]

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        async with self.client(10) as c:
            found: list[dict[str, Any]] = (await c.get("/gateway/events")).json()["events"]
        return [e for e in found if kind is None or e["kind"] == kind]

    async def metrics(self) -> str:
        return await scrape_async(self.url)

    async def wait_state(self, name: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            model = await self.model(name)
            return model if model["state"] == state else None
        found: dict[str, Any] = await wait_for(reached, timeout, f"model {name} to be {state}")
        return found

    async def wait_counters_zero(self, timeout: float = 10.0) -> None:
        async def zero() -> bool:
            return all(m["in_flight"] == 0 and m["queued"] == 0
                       for m in (await self.status())["models"])
        await wait_for(zero, timeout, "in_flight and queued back to 0")

    async def close(self) -> None:
        """Stop the gateway as SIGTERM does, and fail if a server it started is still up."""
        await self._runner.cleanup()
        left = self.launcher.running()
        await self.launcher.close()
        assert not left, f"servers left running by the gateway: {[s.spec.model.name for s in left]}"


@contextlib.asynccontextmanager
async def in_process_gateway(state_dir: Path, models: dict[str, Any], *,
                             clock: Clock | None = None, env: dict[str, str] | None = None,
                             **top: Any) -> AsyncIterator[InProcessGateway]:
    """A gateway for ``models`` and top-level keys as the YAML file would give them;
    ``env`` stands for the gateway's environment (nothing of this process's is read)."""
    port = free_port()
    top["server"] = {"host": HOST, "port": port, "shutdown_timeout_s": 2, **top.get("server", {})}
    top.setdefault("state_dir", str(state_dir))
    config = load_config(None, env or {}, text=yaml.safe_dump({"models": models, **top}))
    launcher = InProcessLauncher()
    app = create_app(config, launchers={"subprocess": launcher})
    gateway = app[GATEWAY_KEY]
    if clock is not None:
        gateway.clock = clock
    # As serve.run_gateway runs it.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                           shutdown_timeout=config.server.shutdown_timeout_s + 5)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    gw = InProcessGateway(f"http://{HOST}:{port}", gateway, launcher, gateway.clock, runner)
    try:
        yield gw
    finally:
        await gw.close()
