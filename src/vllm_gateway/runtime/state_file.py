"""What the gateway learns and keeps in its state dir across restarts: one JSON file per kind.

A file that cannot be read or written is never fatal: the gateway warns, naming ``what`` the
file holds, and goes on with what it has (it only learns again).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("vllm_gateway.state")


def read(path: Path, what: str) -> object | None:
    """The file's JSON; None when it is missing or unreadable (with a warning)."""
    try:
        data: object = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the %s in %s: %s", what, path, exc)
        return None
    return data


def write(path: Path, data: object, what: str) -> None:
    """Replace the file at once (written beside it, then renamed): a reader never sees half."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot keep the %s in %s: %s", what, path, exc)
