"""The engine's sleep state, as vLLM 0.32 behaves over HTTP (measured on its CPU build).

A sleep pauses the engine: requests that arrive are held (no error, no 503)
until the engine is fully awake, and requests in flight are aborted, waited
for or frozen according to the sleep's mode. Waking is per tag (``weights``,
``kv_cache``); after a level-2 sleep the weights must also be reloaded
(``collective_rpc reload_weights``) before the engine counts as awake. This
follows a GPU, where level 2 discards the weights, rather than the CPU build,
where nothing is discarded and a plain ``/wake_up`` is enough.
"""

from __future__ import annotations

import asyncio

from .options import Settings

TAGS = ("weights", "kv_cache")
# vLLM's mode=wait polls its scheduler; the fake polls its set of running requests.
WAIT_POLL_S = 0.01


class EngineDead(Exception):
    """The server stopped while a request was held."""


class OperationFailed(Exception):
    """A sleep or wake told to fail loudly (``--fail-sleep=error``, ``--fail-wake=error``)."""


class Generation:
    """One request being generated; a sleep with ``mode=abort`` ends it."""

    __slots__ = ("_event", "aborted")

    def __init__(self) -> None:
        self.aborted = False
        self._event = asyncio.Event()

    def abort(self) -> None:
        self.aborted = True
        self._event.set()

    async def pause(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: until aborted); an abort ends the wait early."""
        if seconds is None:
            await self._event.wait()
            return
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            pass


class Engine:
    """The one owner of the sleep state; the dev endpoints and the generators ask it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # The level slept at; None when fully awake.
        self.level: int | None = None
        self._asleep: set[str] = set()
        self._needs_reload = False
        self._wake_paid = True
        self.sleeps = 0
        self.full_wakes = 0
        # A wake is paying its delay: on a GPU the memory is coming back meanwhile.
        self._waking = False
        self.running: set[Generation] = set()
        # Requests waiting for the engine, not yet counted as running (vLLM's
        # metrics show them neither as running nor as waiting).
        self.held = 0
        self._dead = False
        self._open = asyncio.Event()
        self._open.set()
        # Sleeps and wakes run one at a time, as they queue in vLLM's engine.
        self._lock = asyncio.Lock()

    @property
    def is_sleeping(self) -> bool:
        return self.level is not None

    @property
    def resident(self) -> bool:
        """Whether a GPU server would hold its full memory now: awake, or a wake has begun."""
        return self.level is None or self._waking or self._asleep != set(TAGS)

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @property
    def garbled(self) -> bool:
        after = self._settings.garbage_after_wakes
        return after is not None and self.full_wakes >= after

    def sleep_state(self) -> dict[str, int]:
        """vLLM's ``vllm:engine_sleep_state`` series: level 0 reads 0/0/0."""
        return {
            "awake": int(self.level is None),
            "weights_offloaded": int(self.level == 1),
            "discard_all": int(self.level == 2),
        }

    async def hold(self, count: bool = True) -> None:
        """Return once the engine runs; raise EngineDead if the server stops first."""
        if self._open.is_set():
            return
        if count:
            self.held += 1
        try:
            # A new sleep may close the engine again between the wake and this task.
            while not self._open.is_set():
                await self._open.wait()
        finally:
            if count:
                self.held -= 1
        if self._dead:
            raise EngineDead

    def hang(self) -> None:
        """Stop producing tokens (a test hook): running and new generations wait, as in a
        wedged engine, until the server is stopped."""
        self._open.clear()

    def shut_down(self) -> None:
        """Release every held request with an error, as vLLM does on SIGTERM."""
        self._dead = True
        self._open.set()

    async def sleep(self, level: int, mode: str) -> None:
        """Put the engine to sleep at ``level``; a sleeping engine is left as it is."""
        async with self._lock:
            if self.level is not None:
                return
            self._open.clear()
            try:
                if mode == "abort":
                    for generation in list(self.running):
                        generation.abort()
                elif mode == "wait":
                    while self.running:  # noqa: ASYNC110 - polled, as vLLM's scheduler is
                        await asyncio.sleep(WAIT_POLL_S)
                if self._settings.sleep_delay > 0:
                    await asyncio.sleep(self._settings.sleep_delay)
                fail = self._settings.fail_sleep
                if fail == "error":
                    raise OperationFailed("sleep failed (--fail-sleep=error)")
                if fail is None:
                    self.sleeps += 1
                    self.level = level
                    self._asleep = set(TAGS)
                    self._needs_reload = level == 2
                    self._wake_paid = False
            finally:
                if self.level is None:
                    self._open.set()

    async def wake(self, tags: list[str] | None) -> bool:
        """Wake the tags named (None: all); True when the engine is fully awake after."""
        async with self._lock:
            if self.level is None:
                return True
            wanted = set(TAGS) if tags is None else set(tags) & set(TAGS)
            if not wanted:
                return False
            self._waking = True
            try:
                if not self._wake_paid and self._settings.wake_delay > 0:
                    await asyncio.sleep(self._settings.wake_delay)
            finally:
                self._waking = False
            fail = self._settings.fail_wake
            if fail == "error":
                raise OperationFailed("wake failed (--fail-wake=error)")
            if fail == "silent":
                return True
            self._wake_paid = True
            self._asleep -= wanted
            self._wake_if_ready()
            return self.level is None

    def reload_weights(self) -> None:
        """Reload the weights into woken buffers; before the weights wake it does nothing."""
        if self.level is not None and "weights" not in self._asleep:
            self._needs_reload = False
            self._wake_if_ready()

    def _wake_if_ready(self) -> None:
        if not self._asleep and not self._needs_reload:
            self.level = None
            self.full_wakes += 1
            self._open.set()
