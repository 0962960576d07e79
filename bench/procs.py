"""Child processes of the benchmark: start, wait for, measure and stop them.

Every child runs in its own process group (``start_new_session``) and is stopped
by signalling that group, so servers that fork workers (nginx, the gateway's
model backends) leave nothing behind. :class:`Processes` is a context manager
that stops whatever is still running when the benchmark ends, however it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

LOOPBACK = "127.0.0.1"


class ChildFailed(RuntimeError):
    """A child exited or never became ready; the message carries its last output."""


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


def pinned(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """``argv`` run under ``taskset`` so that every process it forks inherits the CPU set.

    Setting the affinity of the first PID after it started would race with the
    workers it forks (nginx) and miss them; taskset applies it before exec.
    """
    taskset = shutil.which("taskset")
    if not cpus or taskset is None:
        return list(argv)
    return [taskset, "--cpu-list", ",".join(str(cpu) for cpu in cpus), *argv]


class Processes:
    """Owns the benchmark's children; leaving the ``with`` block stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._children: list[Child] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: Sequence[int] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log_path = self._log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                pinned(argv, cpus),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
            )
        child = Child(name, popen, log_path)
        self._children.append(child)
        return child

    def stop(self, child: Child, grace_s: float = 5.0) -> None:
        """SIGTERM the child's process group, then SIGKILL what is left after ``grace_s``."""
        if child in self._children:
            self._children.remove(child)
        pgid = child.pid  # start_new_session made the child its group's leader
        members = _group_members(pgid)
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if child.popen.poll() is not None and not any(p.is_running() for p in members):
                break
            time.sleep(0.02)
        _signal_group(pgid, signal.SIGKILL)
        try:
            child.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def wait_port(child: Child, port: int, timeout_s: float) -> float:
    """Seconds until ``port`` accepts connections; raises if the child dies or time runs out."""
    start = time.monotonic()
    deadline = start + timeout_s
    while time.monotonic() < deadline:
        if port_open(port):
            return time.monotonic() - start
        if child.popen.poll() is not None:
            raise ChildFailed(
                f"{child.name} exited with {child.popen.returncode} before listening on "
                f"port {port}:\n{child.log_tail()}"
            )
        time.sleep(0.005)
    raise ChildFailed(f"{child.name} did not listen on port {port} in {timeout_s:g} s")


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that are alive now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by the live process tree of ``pid``."""
    total = 0.0
    for proc in tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class RssSampler:
    """Samples the RSS of a process tree in a thread while enabled; keeps the peak.

    Sampling can be paused (:meth:`pause`) so that phases which start model
    backends under the proxy (the swap measurement) do not count as its memory.
    """

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._peak = 0
        self._active = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @property
    def peak_bytes(self) -> int:
        return self._peak

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self._active.is_set():
                self._peak = max(self._peak, tree_rss_bytes(self._pid))

    def __enter__(self) -> Self:
        self._peak = tree_rss_bytes(self._pid)
        self._active.set()
        self._thread.start()
        return self

    def pause(self) -> None:
        self._active.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
