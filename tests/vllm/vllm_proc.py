"""Real vLLM (CPU build) for the ``vllm`` suite: its command line and its processes.

:class:`VllmStack` knows the vLLM venv's python, the tiny model and the
environment; it builds the command that the gateway's config would hold.
:class:`VllmServer` runs one server directly (no gateway), in its own process
group, for tests that compare against vLLM itself or prove the fixtures.

Facts these rely on (measured, see the project's BACKENDS notes): a server is
four processes in one group (api server, resource tracker, EngineCore, Worker);
it refuses connections for the whole load, then /health answers 200; SIGTERM
to the group ends them all within seconds, while SIGKILL of the main PID alone
leaves three behind; EngineCore and Worker rename themselves, so they are
found by process group, not by name or environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from helpers import HOST
from procutil import group_pids

# Load time under a busy 2-core machine reached 53 s; leave a wide margin.
STARTUP_TIMEOUT_S = float(os.environ.get("VLLM_STARTUP_TIMEOUT_S", "300"))
STOP_GRACE_S = 30.0
# vLLM reads these at start. Offline: no weights or tokenizer may come from a
# hub, and a lookup would only fail after a timeout. No usage stats: the
# server would otherwise try to reach an outside host.
SERVER_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
# Silently overrides --kv-cache-memory-bytes, so an inherited value must go.
DROPPED_ENV = ("VLLM_CPU_KVCACHE_SPACE",)


@dataclass(frozen=True)
class VllmStack:
    """The installed vLLM CPU stack plus the tiny model it serves."""

    python: Path
    model_dir: Path
    extra_args: tuple[str, ...] = field(default=())

    def command(self, name: str = "{name}", port: int | str = "{port}") -> list[str]:
        """The server's argv; the defaults leave the gateway's placeholders in."""
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", name,
            "--port", str(port),
            "--dtype", "float32",
            "--enforce-eager",
            "--max-model-len", "256",
            "--kv-cache-memory-bytes", "64M",
            *self.extra_args,
        ]  # fmt: skip

    @property
    def server_env(self) -> dict[str, str]:
        """What a model's ``env`` in the gateway config should add."""
        return dict(SERVER_ENV)

    def full_env(self) -> dict[str, str]:
        """This process's environment made fit for starting vLLM directly."""
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        env.update(SERVER_ENV)
        return env


class VllmServer:
    """One vLLM server started directly, as the leader of a new process group."""

    def __init__(self, stack: VllmStack, name: str, port: int, log_dir: Path) -> None:
        self.name = name
        self.port = port
        self.base_url = f"http://{HOST}:{port}"
        self.stdout_path = log_dir / f"vllm-{name}-{port}.out"
        self.stderr_path = log_dir / f"vllm-{name}-{port}.err"
        # Files, not pipes: nobody has to drain them, and orphans holding a
        # pipe open cannot block a wait.
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                stack.command(name, port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=stack.full_env(),
                cwd=log_dir,
                start_new_session=True,
            )
        self.pgid = self.proc.pid
        self.startup_s: float | None = None
        self._started = time.monotonic()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> float:
        """Poll /health until it answers 200; returns the seconds since start."""
        deadline = self._started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.proc.returncode} while starting\n{self.log_tail()}"
                )
            if self._health_ok():
                self.startup_s = time.monotonic() - self._started
                return self.startup_s
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM not ready after {timeout} s\n{self.log_tail()}")
            time.sleep(0.25)

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tree(self) -> list[psutil.Process]:
        """The server and all its descendants, as they are now."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def alive_in_group(self) -> list[int]:
        return group_pids(self.pgid)

    def stop(self, grace: float = STOP_GRACE_S) -> float:
        """SIGTERM the group, SIGKILL it after ``grace``; returns seconds until it was gone.

        Raises TimeoutError when SIGTERM alone did not clear the group (after
        killing what was left, so a failing test still leaves nothing).
        """
        started = time.monotonic()
        self._signal_group(signal.SIGTERM)
        deadline = started + grace
        while self.alive_in_group() or self.proc.poll() is None:
            if time.monotonic() > deadline:
                left = self.alive_in_group()
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
                raise TimeoutError(f"after SIGTERM, {left} still alive after {grace} s")
            time.sleep(0.05)
        return time.monotonic() - started

    def kill(self) -> None:
        """Best-effort cleanup for teardown: the whole group, at once."""
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)
