"""Model servers as local processes, each in its own process group.

Why a process group: vLLM starts an engine core and workers; SIGKILL of its
main process alone leaves them running and holding GPU memory. Everything here
signals the whole group and waits until no process of it is left.

Why not ``asyncio.subprocess``: its ``wait()`` returns only once the pipes are
closed too, and orphaned workers that inherited them keep them open. Exit is
watched through a pidfd (or polling) and the pipes are read separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping

from .base import LaunchError, LaunchSpec, LocalServer, LogBuffer
from .pgroup import terminate_group
from .pgroups import GroupRecords

log = logging.getLogger("vllm_gateway.launcher")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the gateway dies.

    SIGTERM rather than SIGKILL, because vLLM stops its own workers on SIGTERM.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def format_argv(argv: tuple[str, ...], values: Mapping[str, str]) -> list[str]:
    """Fill ``{port}``-style placeholders in each argument (no shell involved)."""
    return [arg.format_map(values) for arg in argv]


class ProcessHandle(LocalServer):
    def __init__(self, popen: subprocess.Popen[bytes], port: int, logs: LogBuffer,
                 records: GroupRecords | None, name: str) -> None:
        super().__init__(port, logs)
        self._popen = popen
        self._records = records
        self._name = name
        self._tasks = [
            asyncio.create_task(self._pump(popen.stdout, "")),
            asyncio.create_task(self._pump(popen.stderr, "")),
            asyncio.create_task(self._watch_exit()),
        ]

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def _pump(self, pipe: object, prefix: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # a line longer than the limit: keep what we can
                    raw = await reader.read(1 << 16)
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._logs.append(prefix + line)
                log.debug("[%s] %s", self._name, line)
        finally:
            transport.close()

    async def _watch_exit(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):
            fd = -1
        try:
            if fd >= 0:
                readable: asyncio.Future[None] = loop.create_future()

                def on_readable() -> None:
                    if not readable.done():
                        readable.set_result(None)

                loop.add_reader(fd, on_readable)
                try:
                    await readable
                finally:
                    loop.remove_reader(fd)
            while self._popen.poll() is None:  # noqa: ASYNC110 - without a pidfd only polling sees it
                await asyncio.sleep(0.05)
        finally:
            if fd >= 0:
                os.close(fd)
        code = self._popen.wait()
        self._exited_with(code)

    async def stop(self, grace_s: float) -> None:
        pgid = self._popen.pid
        await terminate_group(pgid, grace_s, reap=self._popen.poll, name=self._name)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), 5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._records is not None:
            self._records.forget(pgid)


class SubprocessLauncher:
    def __init__(self, records: GroupRecords | None = None) -> None:
        self._records = records

    async def start(self, spec: LaunchSpec) -> ProcessHandle:
        model = spec.model
        if model.command is None:
            raise LaunchError(f"model {model.name} has no command")
        argv = format_argv(model.command, spec.placeholders())
        env = dict(os.environ)
        env.update(model.env)
        env.update(spec.env)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpu_ids)
        env.setdefault("PYTHONUNBUFFERED", "1")
        logs = LogBuffer()
        try:
            # Popen rather than asyncio's subprocess (see the module docstring); the fork is
            # quick and preexec_fn runs in the event loop's thread, the one the
            # parent-death signal is tied to.
            popen = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        except OSError as exc:
            raise LaunchError(f"cannot run {argv[0]!r} for model {model.name}: {exc}") from exc
        if self._records is not None:
            self._records.remember(popen.pid, model.name)
        log.info("[%s] started pid %d: %s", model.name, popen.pid, " ".join(argv))
        return ProcessHandle(popen, spec.port, logs, self._records, model.name)

    async def cleanup_leftovers(self) -> list[str]:
        if self._records is None:
            return []
        return await asyncio.to_thread(self._records.kill_orphans)

    async def close(self) -> None:
        return None
