"""A state file of the process groups a gateway started.

The parent-death signal takes model servers down with the gateway, but a
server may ignore SIGTERM or start before the signal was armed. The next start
of a gateway on the same port reads this file and stops what is left, but only
groups whose recorded gateway is gone (so two gateways never fight) and whose
leader is still the process that was started (pids are reused).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import psutil

from .pgroup import terminate_group_blocking

log = logging.getLogger("vllm_gateway.launcher")


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class GroupRecords:
    def __init__(self, path: Path, grace_s: float = 10.0) -> None:
        self._path = path
        self._grace_s = grace_s
        self._me = {"pid": os.getpid(), "created": _create_time(os.getpid())}

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return []
        entries = data.get("groups", []) if isinstance(data, dict) else []
        return [e for e in entries if isinstance(e, dict)]

    def _write(self, entries: list[dict[str, Any]]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"groups": entries}))
        os.replace(tmp, self._path)

    def remember(self, pid: int, model: str) -> None:
        entries = self._read()
        entries.append({
            "pgid": pid, "model": model, "created": _create_time(pid),
            "gateway_pid": self._me["pid"], "gateway_created": self._me["created"],
        })
        self._write(entries)

    def forget(self, pgid: int) -> None:
        self._write([e for e in self._read() if e.get("pgid") != pgid])

    def kill_orphans(self) -> list[str]:
        """Stop groups left by a gateway that is no longer running; name them."""
        killed: list[str] = []
        keep: list[dict[str, Any]] = []
        for entry in self._read():
            gw_pid, gw_created = entry.get("gateway_pid"), entry.get("gateway_created")
            if isinstance(gw_pid, int) and _create_time(gw_pid) == gw_created and gw_created:
                keep.append(entry)  # its gateway still runs: not ours to touch
                continue
            pgid = entry.get("pgid")
            if not isinstance(pgid, int):
                continue
            leader_created = _create_time(pgid)
            if leader_created is not None and leader_created != entry.get("created"):
                continue  # the pid was reused by an unrelated process
            # With the leader gone, the kernel keeps the pgid reserved while any member lives,
            # so whatever still answers to it is the orphaned rest of that server.
            log.warning("stopping leftover process group %d of model %s", pgid, entry.get("model"))
            terminate_group_blocking(pgid, self._grace_s, str(entry.get("model")))
            killed.append(f"{entry.get('model')} (pgid {pgid})")
        self._write(keep)
        return killed
