"""Model servers as Docker containers, through the Engine API (aiodocker).

One container per running model, named ``{prefix}_{n}`` with ``n`` the lowest
free slot, labelled with the gateway instance and the model so that a later
run can find and remove what an earlier one left behind.

Images are never pulled: pulling a multi-GB vLLM image inside a request's
start-up timeout would look like a hang. A missing image is a LaunchError that
says which image and how to get it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from ..config import DockerSpec
from .base import LaunchError, LaunchSpec, LocalServer
from .docker_config import (
    LABEL_INSTANCE,
    LABEL_MODEL,
    container_config,
    container_name_pattern,
    explain_start_error,
)

log = logging.getLogger("vllm_gateway.launcher")

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Status aiodocker gives a request that never reached the engine.
_UNREACHABLE = 900
# Two gateways sharing an engine and a prefix may race for a slot; a few
# retries on the next free one settle it.
_NAME_ATTEMPTS = 5
# How long an engine call that should be quick may take before we give up on it.
_ENGINE_CALL_S = 30.0


class ContainerHandle(LocalServer):
    """One running container; follows its logs and its exit in the background."""

    def __init__(
        self,
        container: DockerContainer,
        name: str,
        port: int,
        pid: int | None,
        model: str,
        on_removed: Callable[[ContainerHandle], None] = lambda handle: None,
    ) -> None:
        super().__init__(port)
        self._container = container
        self._on_removed = on_removed
        self._name = name
        self._pid = pid
        self._model = model
        self._tasks = [
            asyncio.create_task(self._follow_logs()),
            asyncio.create_task(self._watch_exit()),
        ]

    @property
    def name(self) -> str:
        """The container's name, e.g. ``vllm_0``."""
        return self._name

    @property
    def container_id(self) -> str:
        return self._container.id

    @property
    def pid(self) -> int | None:
        return self._pid

    async def _follow_logs(self) -> None:
        # The engine sends stdout and stderr as frames that are usually whole
        # lines; a buffer still joins a line that came in pieces.
        pending = ""
        try:
            stream = self._container.log(stdout=True, stderr=True, follow=True)
            async for chunk in stream:
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    self._append(line)
        except (aiodocker.DockerError, aiohttp.ClientError) as exc:
            log.debug("[%s] log stream of %s ended: %s", self._model, self._name, exc)
        finally:
            if pending:
                self._append(pending)

    def _append(self, line: str) -> None:
        line = line.rstrip("\r")
        self._logs.append(line)
        log.debug("[%s] %s", self._model, line)

    async def _watch_exit(self) -> None:
        while not self._exited.done():
            try:
                result = await self._container.wait()
                code = int(result.get("StatusCode", -1))
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    await self._engine_hiccup(exc)
                    continue
                code = -1  # removed behind our back: it is certainly not running
            except (aiohttp.ClientError, ValueError) as exc:
                await self._engine_hiccup(exc)
                continue
            self._exited_with(code)

    async def _engine_hiccup(self, exc: Exception) -> None:
        # The engine restarted or dropped the connection: ask again shortly,
        # rather than leave the handle saying "alive" for ever.
        log.debug("[%s] waiting on %s failed: %s", self._model, self._name, exc)
        await asyncio.sleep(1.0)

    async def _record_exit_from_inspect(self) -> None:
        """For a handle no longer watched (after close): read the exit code once."""
        try:
            state = (await self._container.show()).get("State", {})
        except aiodocker.DockerError:
            state = {"Running": False, "ExitCode": -1}
        if not state.get("Running"):
            self._exited_with(int(state.get("ExitCode", -1)))

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, SIGKILL after ``grace_s``, wait for the exit, remove the container."""
        if self.alive():
            await self._stop_container(grace_s)
        if self._tasks[1].done():
            await self._record_exit_from_inspect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), _ENGINE_CALL_S)
        try:
            await asyncio.wait_for(self._container.delete(force=True, v=True), _ENGINE_CALL_S)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                log.warning("[%s] could not remove container %s: %s", self._model, self._name, exc)
        except TimeoutError:
            log.warning("[%s] removing container %s timed out", self._model, self._name)
        # The log stream ends with the container; give it a moment to drain.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._tasks[0]), 2.0)
        await self.close()
        self._on_removed(self)

    async def _stop_container(self, grace_s: float) -> None:
        # The engine itself sends SIGKILL after t seconds; our own bound covers
        # an engine that does not answer at all.
        t = max(0, math.ceil(grace_s))
        try:
            await asyncio.wait_for(self._container.stop(t=t), grace_s + _ENGINE_CALL_S)
            return
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return
            log.warning("[%s] stop of %s failed (%s): killing it", self._model, self._name, exc)
        except TimeoutError:
            log.warning("[%s] stop of %s hung: killing it", self._model, self._name)
        with contextlib.suppress(aiodocker.DockerError, TimeoutError):
            await asyncio.wait_for(self._container.kill(), _ENGINE_CALL_S)

    async def close(self) -> None:
        """Stop following the container (it keeps running)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class DockerLauncher:
    """Starts each model server as a container on one Docker engine.

    ``docker_host`` is an engine address such as ``unix:///var/run/docker.sock``
    or ``tcp://host:2375``; without it DOCKER_HOST is read, then the default socket.
    """

    def __init__(self, prefix: str, instance_id: str, docker_host: str | None = None) -> None:
        self._prefix = prefix
        self._instance_id = instance_id
        self._url = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        self._names = container_name_pattern(prefix)
        self._client: aiodocker.Docker | None = None
        self._handles: set[ContainerHandle] = set()
        self._slot_lock = asyncio.Lock()

    @property
    def docker_host(self) -> str:
        return self._url

    def _docker(self) -> aiodocker.Docker:
        # Created on first use, inside the running loop that will use it.
        if self._client is None:
            try:
                self._client = aiodocker.Docker(url=self._url)
            except ValueError as exc:
                raise LaunchError(f"bad Docker engine address {self._url!r}: {exc}") from None
        return self._client

    async def start(self, spec: LaunchSpec) -> ContainerHandle:
        docker = spec.model.docker or DockerSpec()
        config = container_config(spec, docker, self._instance_id)
        name, container = await self._create(spec, docker, config)
        try:
            await container.start()
            info = await container.show()
        except aiodocker.DockerError as exc:
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)
            raise self._start_error(spec, docker, name, exc) from None
        pid = int(info.get("State", {}).get("Pid") or 0) or None
        handle = ContainerHandle(
            container, name, spec.port, pid, spec.model.name, self._handles.discard
        )
        self._handles.add(handle)
        log.info(
            "[%s] started container %s (%s, image %s, gpus %s): %s",
            spec.model.name,
            name,
            container.id[:12],
            docker.image,
            ",".join(map(str, spec.gpu_ids)) or "none",
            " ".join(config.get("Cmd", ["(the image's own command)"])),
        )
        return handle

    async def _create(
        self, spec: LaunchSpec, docker: DockerSpec, config: dict[str, Any]
    ) -> tuple[str, DockerContainer]:
        client = self._docker()
        async with self._slot_lock:
            for _ in range(_NAME_ATTEMPTS):
                name = f"{self._prefix}_{await self._free_slot()}"
                try:
                    return name, await client.containers.create(config, name=name)
                except aiodocker.DockerError as exc:
                    if exc.status == 409:
                        continue  # taken by someone else since we looked: next slot
                    raise self._start_error(spec, docker, name, exc) from None
        raise LaunchError(
            f"model {spec.model.name}: no free container name {self._prefix}_N after "
            f"{_NAME_ATTEMPTS} tries; another gateway on this engine may use prefix "
            f"{self._prefix!r} (set VLLM_CONTAINER_PREFIX to tell them apart)"
        )

    async def _free_slot(self) -> int:
        taken = set()
        for container in await self._list(all=True):
            for raw in container.get("Names") or []:
                match = self._names.match(str(raw).lstrip("/"))
                if match:
                    taken.add(int(match.group(1)))
        slot = 0
        while slot in taken:
            slot += 1
        return slot

    async def _list(self, **params: Any) -> list[dict[str, Any]]:
        """Raw container summaries (``GET /containers/json``)."""
        client = self._docker()
        try:
            found = await client.containers.list(**params)
        except aiodocker.DockerError as exc:
            raise self._engine_error(exc) from None
        return [{key: c[key] for key in ("Id", "Names", "Labels") if key in c} for c in found]

    def _engine_error(self, exc: aiodocker.DockerError) -> LaunchError:
        if exc.status == _UNREACHABLE:
            return LaunchError(
                f"Docker engine unreachable at {self._url} ({exc.message}); start it, or point "
                "DOCKER_HOST at its socket (e.g. unix:///var/run/docker.sock) and check that "
                "the gateway may use that socket"
            )
        return LaunchError(f"Docker engine at {self._url} answered {exc.status}: {exc.message}")

    def _start_error(
        self, spec: LaunchSpec, docker: DockerSpec, name: str, exc: aiodocker.DockerError
    ) -> LaunchError:
        if exc.status == _UNREACHABLE:
            return self._engine_error(exc)
        return explain_start_error(
            exc.status, exc.message, spec=spec, image=docker.image, name=name, docker_host=self._url
        )

    async def cleanup_leftovers(self) -> list[str]:
        """Remove containers named ``{prefix}_{n}`` that carry the gateway's label.

        Whichever instance started them: a gateway that restarts gets a new
        instance id. Containers this launcher runs now are kept; anything named
        otherwise is never touched, whatever its labels.
        """
        own = {h.container_id for h in self._handles}
        filters = json.dumps({"label": [LABEL_INSTANCE]})
        removed: list[str] = []
        for summary in await self._list(all=True, filters=filters):
            names = [str(n).lstrip("/") for n in summary.get("Names") or []]
            name = next((n for n in names if self._names.match(n)), None)
            if name is None or summary.get("Id") in own:
                continue
            labels = summary.get("Labels") or {}
            try:
                await (
                    self._docker()
                    .containers.container(str(summary["Id"]))
                    .delete(force=True, v=True)
                )
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    log.warning("could not remove leftover container %s: %s", name, exc)
                    continue
            log.info(
                "removed leftover container %s (model %s, instance %s)",
                name,
                labels.get(LABEL_MODEL, "?"),
                labels.get(LABEL_INSTANCE, "?"),
            )
            removed.append(name)
        return removed

    async def close(self) -> None:
        """Stop following containers and release the engine connection.

        Running containers are left running: the gateway stops the ones it
        wants gone first; the rest are leftovers for the next start.
        """
        handles, self._handles = list(self._handles), set()
        for handle in handles:
            await handle.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
