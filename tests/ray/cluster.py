"""A real Ray cluster of several nodes on this one machine, for the ``ray`` suite and the benchmark.

Ray's own multi-node-on-one-host mode: a head (no GPUs) and further nodes that declare
``--num-gpus``, each ``ray start --block`` in its own process group, all under one short
temporary directory (socket paths must stay below 107 bytes) and on ports picked free, so a
cluster never touches another one on the same machine. Nodes start one after the other:
two joining at the same moment time out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 80 * 1024 * 1024
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


def host_ip() -> str:
    """The address Ray gives every node of this host (it replaces 127.0.0.1 with it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            ip: str = sock.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    return ip


@dataclass
class Node:
    name: str
    num_gpus: int
    proc: subprocess.Popen[bytes]
    node_manager_port: int
    log_path: Path

    def raylet(self) -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name() == "raylet":
                        return child
        return None

    def node_id(self) -> str | None:
        """Ray's id of this node, read from its raylet's command line."""
        raylet = self.raylet()
        if raylet is None:
            return None
        with contextlib.suppress(psutil.Error):
            for arg in raylet.cmdline():
                if arg.startswith("--node_id="):
                    return arg.split("=", 1)[1]
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class LocalCluster:
    root: Path
    port: int
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{host_ip()}:{self.port}"

    def _start(self, name: str, args: list[str], num_gpus: int) -> Node:
        nm_port = _free_port()
        log_path = self.root / f"{name}.log"
        ports = ["--node-manager-port", str(nm_port),
                 "--object-manager-port", str(_free_port()),
                 "--dashboard-agent-listen-port", str(_free_port()),
                 "--dashboard-agent-grpc-port", str(_free_port()),
                 "--metrics-export-port", str(_free_port()),
                 "--runtime-env-agent-port", str(_free_port()),
                 "--min-worker-port", "0", "--max-worker-port", "0"]
        cmd = [RAY, "start", *args, "--num-cpus", "1", "--num-gpus", str(num_gpus),
               "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats",
               "--block", *ports]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        node = Node(name, num_gpus, proc, nm_port, log_path)
        self.nodes.append(node)
        self._wait_up(node)
        return node

    def _wait_up(self, node: Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while node.node_id() is None or "Ray runtime started" not in node.log_path.read_text(
                errors="replace"):
            if not node.alive():
                raise RuntimeError(f"ray node {node.name} exited:\n{node.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray node {node.name} not up after {START_TIMEOUT_S} s:\n"
                                   + node.log_path.read_text(errors="replace"))
            time.sleep(0.1)

    def start_head(self) -> Node:
        return self._start("head", ["--head", "--port", str(self.port), "--temp-dir",
                                    str(self.root / "t"), "--include-dashboard=false",
                                    "--ray-client-server-port", str(_free_port())], 0)

    def add_node(self, num_gpus: int, name: str | None = None) -> Node:
        return self._start(name or f"node{len(self.nodes)}", ["--address", self.address],
                           num_gpus)

    def kill_raylet(self, node: Node) -> None:
        """What a machine that dies looks like to Ray: its raylet gone at once."""
        raylet = node.raylet()
        assert raylet is not None, f"node {node.name} has no raylet"
        raylet.kill()

    def stop_node(self, node: Node, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, sig)
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(10)

    def pids(self) -> set[int]:
        """Every process of every node (raylets, workers, and what those started)."""
        found: set[int] = set()
        for node in self.nodes:
            with contextlib.suppress(psutil.Error):
                found.add(node.proc.pid)
                found.update(p.pid for p in psutil.Process(node.proc.pid).children(True))
        return found

    def stop(self) -> None:
        """Nodes first, the head last; then kill whatever of them is left."""
        procs: list[psutil.Process] = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        workers, head = self.nodes[1:], self.nodes[:1]
        for group in (workers, head):
            for node in group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
            for node in group:
                if node.alive():
                    self.stop_node(node)
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(gpus_per_node: list[int]) -> LocalCluster:
    root = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cluster = LocalCluster(root, _free_port(), env)
    try:
        cluster.start_head()
        for count in gpus_per_node:
            cluster.add_node(count)
    except BaseException:
        cluster.stop()
        raise
    return cluster
