"""Process life of the fake backend: load, bind, serve, and stop on a signal.

The order mirrors vLLM: log lines while "loading", the port bound only once
ready (connections are refused before, never answered 503), tracebacks on
stderr, and a worker child that is stopped on SIGTERM but survives SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from .app import build_app
from .options import Settings, parse_settings
from .state import STATE
from .worker import spawn_worker

WORKER_STOP_GRACE_S = 2.0
# In-flight handlers (stalled streams, a hung /health) get this long on shutdown.
SHUTDOWN_TIMEOUT_S = 0.5


def _log(where: str, message: str, level: str = "INFO") -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [{where}] {message}", flush=True)


def _uvicorn(message: str) -> None:
    # Real vLLM's uvicorn lines go to stderr, its own log lines to stdout.
    print(f"INFO:     {message}", file=sys.stderr, flush=True)


def _log_loading(settings: Settings) -> None:
    _log("api_server.py:1885", "vLLM API server version 0.0.0+fake")
    _log(
        "utils.py:326",
        f"non-default args: {{'model': {settings.model_name!r}, "
        f"'served_model_name': {list(settings.served_model_names)!r}, 'port': {settings.port}, "
        f"'gpu_memory_utilization': {settings.gpu_memory_utilization}}}",
    )
    _log(
        "core.py:77",
        f"Initializing a V1 LLM engine (fake) with config: model={settings.model_name!r}",
    )
    _log("gpu_model_runner.py:2302", "Loading model from scratch...")
    if settings.dev_mode:
        _log(
            "api_server.py:1012",
            "SECURITY WARNING: Development endpoints are enabled! "
            "This should NOT be used in production!",
            level="WARNING",
        )
    if settings.runtime_lora:
        _log(
            "api_server.py:1020",
            "LoRA dynamic loading & unloading is enabled in the API server. "
            "This should ONLY be used for local development!",
            level="WARNING",
        )


def _print_failure(last_line: str) -> None:
    """As real vLLM does: the engine's cause first, then the API server's own traceback
    ending in a generic RuntimeError, then shutdown noise; the cause is not the last line."""
    _log("core.py:719", "EngineCore failed to start.", level="ERROR")
    tail = (
        "Traceback (most recent call last):\n"
        '  File "vllm/v1/engine/core.py", line 710, in run_engine_core\n'
        "    engine_core = EngineCoreProc(*args, **kwargs)\n"
        '  File "vllm/v1/worker/gpu_model_runner.py", line 2330, in load_model\n'
        "    self.model = model_loader.load_model(vllm_config=self.vllm_config)\n"
        f"{last_line}\n"
        "Traceback (most recent call last):\n"
        '  File "vllm/entrypoints/openai/api_server.py", line 1923, in <module>\n'
        "    uvloop.run(run_server(args))\n"
        "RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}\n"
        "/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: "
        "resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at "
        "shutdown\n"
        "  warnings.warn('resource_tracker: There appear to be %d '\n"
    )
    sys.stderr.write(tail)
    sys.stderr.flush()


async def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WORKER_STOP_GRACE_S
    while worker.poll() is None:
        if loop.time() > deadline:
            worker.kill()
            worker.wait()
            return
        await asyncio.sleep(0.01)


def _access_logger() -> logging.Logger:
    logger = logging.getLogger("aiohttp.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


async def _serve_until_stopped(
    settings: Settings, stop: asyncio.Event, worker: subprocess.Popen[bytes] | None
) -> int:
    app = build_app(settings)
    app[STATE].worker_pid = None if worker is None else worker.pid
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=_access_logger() if settings.access_log else None,
        access_log_format='INFO:     %a - "%r" %s',
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            # asyncio's message already names the address: "[Errno 98] error while
            # attempting to bind on address ('127.0.0.1', 8000): address already in use".
            print(f"ERROR: {exc}", file=sys.stderr, flush=True)
            return 1
        _log(
            "launcher.py:29",
            f"Starting vLLM API server 0 on http://{settings.host}:{settings.port}",
        )
        _uvicorn(f"Started server process [{os.getpid()}]")
        _uvicorn("Waiting for application startup.")
        _uvicorn("Application startup complete.")
        await stop.wait()
        _uvicorn("Shutting down")
        if worker is not None and worker.poll() is None:
            worker.terminate()
    finally:
        await runner.cleanup()
    _uvicorn("Application shutdown complete.")
    _uvicorn(f"Finished server process [{os.getpid()}]")
    return 0


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _log_loading(settings)
    worker = spawn_worker() if settings.worker and settings.fail_start is None else None
    try:
        started = time.monotonic()
        try:
            await asyncio.wait_for(stop.wait(), settings.startup_delay)
            return 0
        except TimeoutError:
            pass
        if settings.fail_start is not None:
            _print_failure(settings.fail_start)
            return 1
        _log(
            "gpu_model_runner.py:2334",
            f"Model loading took 0.0000 GiB and {time.monotonic() - started:.6f} seconds",
        )
        return await _serve_until_stopped(settings, stop, worker)
    finally:
        if worker is not None:
            await _stop_worker(worker)


def main(argv: Sequence[str]) -> int:
    try:
        settings = parse_settings(argv, os.environ)
    except ValueError as exc:
        # vLLM reads VLLM_SERVER_DEV_MODE with int() at start and dies of its ValueError.
        sys.stderr.write(
            "Traceback (most recent call last):\n"
            '  File "vllm/envs.py", line 1032, in <lambda>\n'
            '    "VLLM_SERVER_DEV_MODE": lambda: bool(int(os.getenv("VLLM_SERVER_DEV_MODE", "0"))),\n'
            f"ValueError: {exc}\n"
        )
        return 1
    return asyncio.run(_serve(settings))
