"""``vllm-gateway status | load | unload | logs`` in subprocesses against a real gateway."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import httpx
import psutil
import pytest
from harness import PY, GatewayProc, chat, fake_command, start_gateway
from helpers import free_port, wait_until

from vllm_gateway.client import new_lines

CLI_ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    """One gateway for the module; each test works on its own model so order does not matter."""
    models = {"alpha": {"command": fake_command("--access-log"), "vram_gb": 10},
              "beta": {"command": fake_command(), "vram_gb": 8},
              "gamma": {"command": fake_command(), "vram_gb": 4}}
    proc = start_gateway(tmp_path_factory.mktemp("cli"), models, gpus=[{"id": 0, "vram_gb": 24}])
    try:
        assert httpx.post(proc.url + "/v1/chat/completions", json=chat("alpha"),
                          timeout=60).status_code == 200
        yield proc
    finally:
        children = psutil.Process(proc.proc.pid).children(recursive=True)
        proc.stop()
        _, alive = psutil.wait_procs(children, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes left behind by the gateway: {alive}"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "vllm_gateway.cli", *args], capture_output=True, text=True,
                          env=CLI_ENV, timeout=timeout, check=False)


def row(output: str, name: str) -> str:
    [line] = [ln for ln in output.splitlines() if re.search(rf"[│|] {name} ", ln)]
    return line


def test_status_shows_gpus_and_models_as_a_table(gw: GatewayProc) -> None:
    out = cli("status", "--url", gw.url)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "GPUs" in out.stdout and "Models" in out.stdout
    [gpu] = [line for line in out.stdout.splitlines() if "24 GB" in line]
    assert "24 GB" in gpu and re.search(r"\b1[0-9]+ GB", gpu)  # alpha's 10 GB, maybe more
    alpha = gw.model("alpha")
    line = row(out.stdout, "alpha")
    for cell in ("ready", "0", "10 GB", "0/50", "0/200", str(alpha["port"]), str(alpha["pid"]),
                 f"{alpha['last_start_s']:.1f} s"):
        assert f" {cell} " in line, (cell, line)
    assert " stopped " in row(out.stdout, "gamma") or " ready " in row(out.stdout, "gamma")

    raw = cli("status", "--json", "--url", gw.url)
    doc = json.loads(raw.stdout)
    assert raw.returncode == 0 and [m["name"] for m in doc["models"]] == ["alpha", "beta", "gamma"]
    assert doc["gpus"][0]["vram_gb"] == 24


def test_load_and_unload_commands(gw: GatewayProc) -> None:
    out = cli("load", "beta", "--url", gw.url)
    assert (out.returncode, out.stdout, out.stderr) == (0, "beta: ready\n", "")
    assert gw.model("beta")["state"] == "ready"
    out = cli("unload", "beta", "--url", gw.url)
    assert (out.returncode, out.stdout, out.stderr) == (0, "beta: stopped\n", "")
    assert gw.model("beta")["state"] == "stopped"
    out = cli("load", "nope", "--url", gw.url)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == "vllm-gateway: 404: no model named 'nope'\n"


class Reader:
    """Lines of a child's output, read in a thread so the test can wait with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate: Any, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            try:
                self.seen.append(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"timed out; output so far: {self.seen}") from None
        return self.seen


def test_logs_command_shows_and_follows_model_output(gw: GatewayProc) -> None:
    api = httpx.get(gw.url + "/gateway/models/alpha/logs?lines=3").json()["lines"]
    out = cli("logs", "alpha", "-n", "3", "--url", gw.url)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.splitlines() == api  # no new line appears without a request

    follow = subprocess.Popen([PY, "-m", "vllm_gateway.cli", "logs", "alpha", "-f", "--url", gw.url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
    try:
        reader = Reader(follow.stdout)  # type: ignore[arg-type]
        reader.until(lambda seen: "INFO:     Application startup complete." in seen)
        # Identical lines (here access-log lines of the same request) are each shown once.
        marker = '"POST /v1/followed-marker HTTP/1.1" 404'
        for count in (1, 2):
            httpx.post(gw.url + "/v1/followed-marker", json=chat("alpha"), timeout=30)
            reader.until(lambda seen, n=count: sum(marker in line for line in seen) == n)
        follow.send_signal(signal.SIGINT)
        assert follow.wait(20) == 130
        assert "Traceback" not in follow.stderr.read()  # type: ignore[union-attr]
        api = httpx.get(gw.url + "/gateway/models/alpha/logs?lines=1000").json()["lines"]
        assert sum(marker in line for line in api) == 2
    finally:
        if follow.poll() is None:
            follow.kill()
        follow.wait(10)


def test_status_watch_redraws_in_a_terminal(gw: GatewayProc) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    watch = subprocess.Popen([PY, "-m", "vllm_gateway.cli", "status", "--watch", "--url", gw.url],
                             stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                             env={**CLI_ENV, "TERM": "xterm-256color"})
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    def screen() -> str:
        return ANSI.sub("", b"".join(chunks).decode(errors="replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_until(lambda: re.search(r"gamma +│ +stopped", screen()), 20, what="gamma stopped")
        before = len(screen())
        assert httpx.post(gw.url + "/gateway/models/gamma/load", timeout=60).status_code == 200
        # The same process redraws the table with gamma's new state.
        wait_until(lambda: re.search(r"gamma +│ +ready", screen()[before:]), 20,
                   what="the watch to show gamma ready")
        watch.send_signal(signal.SIGINT)
        assert watch.wait(20) == 130
        assert "Traceback" not in watch.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait(10)
        reader.join(5)
        os.close(master)


def test_status_watch_into_a_pipe_prints_snapshots(gw: GatewayProc) -> None:
    watch = subprocess.Popen([PY, "-m", "vllm_gateway.cli", "status", "-w", "--url", gw.url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)
    try:
        reader = Reader(watch.stdout)  # type: ignore[arg-type]
        reader.until(lambda seen: sum(line.startswith("Models") for line in seen) >= 2)
        assert re.fullmatch(r"\d\d:\d\d:\d\d", reader.seen[0])
        watch.send_signal(signal.SIGINT)
        assert watch.wait(20) == 130
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait(10)


def test_errors_are_one_clear_line_and_a_nonzero_exit() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runs = {args: subprocess.Popen([PY, "-m", "vllm_gateway.cli", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=CLI_ENV)
            for args in [("status", "--url", url), ("status", "-w", "--url", url),
                         ("load", "x", "--url", url), ("unload", "x", "--url", url),
                         ("logs", "x", "-f", "--url", url), ("status", "--url", "127.0.0.1:1")]}
    for args, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1 and stdout == "", (args, stdout, stderr)
        assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, (args, stderr)
        if args[-1] == url:
            assert stderr.startswith(f"vllm-gateway: cannot reach the gateway at {url}/"), stderr
        else:
            assert stderr.startswith("vllm-gateway: not a usable gateway URL: 127.0.0.1:1"), stderr


def test_a_model_name_is_one_part_of_the_url_or_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a name must fail before that
    for args in [("load", "../status"), ("unload", "a/../../v1/x"), ("logs", "a\\b"),
                 ("load", "x/"), ("unload", "%2e%2e")]:
        out = cli(*args, "--url", url)
        assert out.returncode == 1 and out.stdout == "", (args, out)
        assert out.stderr == f"vllm-gateway: model name {args[1]!r} cannot be part of a URL " \
                             "path\n", out.stderr


def test_new_lines_follows_a_bounded_window() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    # Repeated lines are told apart by position, not content.
    assert new_lines(["x", "a"], ["x", "a", "a"]) == ["a"]
    # The window dropped its oldest lines while new ones came.
    assert new_lines(["a", "b", "c"], ["c", "d", "e"]) == ["d", "e"]
    # A restarted server's window does not continue the old one: all of it is new.
    assert new_lines(["a", "b", "c"], ["s1", "s2"]) == ["s1", "s2"]
