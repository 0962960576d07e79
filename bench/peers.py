"""What stands between the load generator and the upstream: each peer's start-up.

Each peer writes its own configuration into a private temporary folder, starts
as a child of :class:`~bench.procs.Processes` on the proxy's CPUs, and is
ready when it answers. None of them touches a system-wide service or file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from .procs import LOOPBACK, Child, ChildFailed, Processes, free_port, wait_port

MODEL = "bench"
SWAP_MODEL = "bench-swap"
# The gateway's RSS target is stated for ten configured models.
IDLE_MODELS = tuple(f"bench-idle-{index}" for index in range(1, 9))
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Context:
    procs: Processes
    workdir: Path
    repo_root: Path
    upstream_port: int
    proxy_cpus: tuple[int, ...] | None
    backend_argv: Callable[[str, str], list[str]]  # (port, name) -> fake backend command


@dataclass
class Endpoint:
    """A running target: where to send requests and which process tree to measure."""

    name: str
    base_url: str
    version: str
    child: Child | None = None  # None: nothing to measure (direct)
    headers: dict[str, str] = field(default_factory=dict)


def _http_ready(url: str, child: Child, timeout_s: float) -> None:
    # No proxy from the environment: every request of the benchmark stays on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise ChildFailed(
                f"{child.name} exited with {child.popen.returncode} while starting:\n"
                f"{child.log_tail()}"
            )
        try:
            with opener.open(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise ChildFailed(f"{child.name} not ready at {url} in {timeout_s:g} s:\n{child.log_tail()}")


def _command_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (done.stdout + done.stderr).strip().splitlines()[-1] if done.returncode == 0 else "?"


class Peer(Protocol):
    name: str

    def missing(self, repo_root: Path) -> str | None:
        """Why this peer cannot run here (not installed), or None."""

    def start(self, ctx: Context) -> Endpoint:
        """Start the peer in front of the upstream; returns once it answers."""


class Direct:
    name = "direct"

    def missing(self, repo_root: Path) -> str | None:
        return None

    def start(self, ctx: Context) -> Endpoint:
        return Endpoint(self.name, f"http://{LOOPBACK}:{ctx.upstream_port}", "")


_NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{
        server {host}:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx_path() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


class Nginx:
    """A private nginx instance: its own conf, pid, log and temp files, never the system one."""

    name = "nginx"

    def missing(self, repo_root: Path) -> str | None:
        return None if nginx_path() else "nginx is not installed (scripts/install_bench_tools.sh)"

    def start(self, ctx: Context) -> Endpoint:
        exe = nginx_path()
        assert exe is not None
        folder = ctx.workdir / "nginx"
        folder.mkdir()
        port = free_port()
        conf = folder / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(
                workers=len(ctx.proxy_cpus) if ctx.proxy_cpus else 1,
                dir=folder,
                host=LOOPBACK,
                port=port,
                upstream_port=ctx.upstream_port,
            )
        )
        # -e keeps nginx from opening the system error log before it reads the conf.
        child = ctx.procs.spawn(
            self.name,
            [exe, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
            cpus=ctx.proxy_cpus,
        )
        wait_port(child, port, READY_TIMEOUT_S)
        version = _command_version([exe, "-v"]).rpartition("/")[2]
        return Endpoint(self.name, f"http://{LOOPBACK}:{port}", version, child)


class Bare:
    """The least aiohttp server-plus-client proxy (bench/bare.py): the floor of the gateway's stack."""

    name = "bare"

    def missing(self, repo_root: Path) -> str | None:
        return None

    def start(self, ctx: Context) -> Endpoint:
        port = free_port()
        argv = [sys.executable, "-m", "bench.bare", "--host", LOOPBACK, "--port", str(port)]
        argv += ["--upstream", f"http://{LOOPBACK}:{ctx.upstream_port}"]
        child = ctx.procs.spawn(self.name, argv, cpus=ctx.proxy_cpus, cwd=ctx.repo_root)
        base = f"http://{LOOPBACK}:{port}"
        _http_ready(f"{base}/health", child, READY_TIMEOUT_S)
        return Endpoint(self.name, base, f"aiohttp {importlib.metadata.version('aiohttp')}", child)


def gateway_path() -> str | None:
    beside_python = Path(sys.executable).with_name("vllm-gateway")
    return str(beside_python) if beside_python.exists() else shutil.which("vllm-gateway")


def gateway_config(ctx: Context, port: int) -> dict[str, object]:
    models: dict[str, object] = {MODEL: {"url": f"http://{LOOPBACK}:{ctx.upstream_port}"}}
    for name in (SWAP_MODEL, *IDLE_MODELS):
        models[name] = {"command": ctx.backend_argv("{port}", "{name}")}
    return {
        "server": {"host": LOOPBACK, "port": port},
        "defaults": {"max_concurrent": 256, "max_queue": 1024, "idle_timeout_s": 0},
        "models": models,
    }


class Gateway:
    name = "gateway"

    def missing(self, repo_root: Path) -> str | None:
        if importlib.util.find_spec("vllm_gateway.cli") is None:
            return "vllm_gateway.cli is not importable here (pip install -e . into this venv)"
        if gateway_path() is None:
            return "the vllm-gateway command is not installed (pip install -e . into this venv)"
        return None

    def start(self, ctx: Context) -> Endpoint:
        exe = gateway_path()
        assert exe is not None
        port = free_port()
        config = ctx.workdir / "gateway.yaml"
        config.write_text(yaml.safe_dump(gateway_config(ctx, port), sort_keys=False))
        child = ctx.procs.spawn(
            self.name,
            [exe, "serve", "--config", str(config), "--host", LOOPBACK, "--port", str(port)],
            cpus=ctx.proxy_cpus,
        )
        base = f"http://{LOOPBACK}:{port}"
        _http_ready(f"{base}/health", child, READY_TIMEOUT_S)
        try:
            version = importlib.metadata.version("vllm-gateway")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return Endpoint(self.name, base, version, child)


def litellm_venv(repo_root: Path) -> Path:
    return repo_root / ".venv-litellm"


class LiteLLM:
    """The LiteLLM proxy from its own venv, one worker, offline and quiet."""

    name = "litellm"

    def missing(self, repo_root: Path) -> str | None:
        if not (litellm_venv(repo_root) / "bin" / "litellm").exists():
            return "LiteLLM is not installed in .venv-litellm (scripts/install_bench_tools.sh)"
        return None

    def start(self, ctx: Context) -> Endpoint:
        venv = litellm_venv(ctx.repo_root)
        port = free_port()
        config = ctx.workdir / "litellm.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": MODEL,
                            "litellm_params": {
                                "model": f"openai/{MODEL}",
                                "api_base": f"http://{LOOPBACK}:{ctx.upstream_port}/v1",
                                "api_key": "unused",
                            },
                        }
                    ],
                    "general_settings": {
                        "store_model_in_db": False,
                        "disable_spend_logs": True,
                    },
                },
                sort_keys=False,
            )
        )
        # A fresh key per run, handed over in the environment: it is never written down.
        master_key = "sk-" + secrets.token_hex(16)
        env = {
            "LITELLM_MASTER_KEY": master_key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MODE": "PRODUCTION",
            "LITELLM_LOG": "ERROR",
            "DISABLE_ADMIN_UI": "True",
            "NO_DOCS": "True",
            # Its HTTP client honours proxy variables; the upstream is on loopback.
            "NO_PROXY": LOOPBACK,
            "no_proxy": LOOPBACK,
        }
        argv = [str(venv / "bin" / "litellm"), "--config", str(config)]
        argv += ["--host", LOOPBACK, "--port", str(port), "--num_workers", "1"]
        child = ctx.procs.spawn(self.name, argv, cpus=ctx.proxy_cpus, env=env, cwd=ctx.workdir)
        base = f"http://{LOOPBACK}:{port}"
        _http_ready(f"{base}/health/liveliness", child, READY_TIMEOUT_S)
        version = _command_version(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ]
        )
        headers = {"Authorization": f"Bearer {master_key}"}
        return Endpoint(self.name, base, version, child, headers)


PEERS: dict[str, Peer] = {
    peer.name: peer for peer in (Direct(), Nginx(), Bare(), Gateway(), LiteLLM())
}
