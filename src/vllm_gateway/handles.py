"""What the runtime knows of a running model server, whoever started it.

The pure core and the runtime import these; launchers implement them. Nothing
here does I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol


class LogBuffer:
    """The last lines a server printed, bounded, with listeners for live tails."""

    def __init__(self, max_lines: int = 1000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._listeners: list[Callable[[str], None]] = []

    def append(self, line: str) -> None:
        self._lines.append(line)
        for listener in list(self._listeners):
            listener(line)

    def tail(self, n: int) -> list[str]:
        if n <= 0:
            return []
        return list(self._lines)[-n:]

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


class ServerHandle(Protocol):
    """One running model server."""

    @property
    def pid(self) -> int | None:
        """The main process id, or None where there is no local process."""

    @property
    def base_url(self) -> str:
        """Where the server answers, e.g. ``http://127.0.0.1:41234``."""

    @property
    def logs(self) -> LogBuffer: ...

    @property
    def returncode(self) -> int | None:
        """The exit code once the server is gone, else None."""

    def alive(self) -> bool: ...

    async def wait_exit(self) -> int:
        """Wait until the server's main process has exited; returns its exit code."""

    async def stop(self, grace_s: float) -> None:
        """SIGTERM (or the equivalent), SIGKILL after ``grace_s``, and return only
        when every process of the server is gone, so its memory is really free."""
