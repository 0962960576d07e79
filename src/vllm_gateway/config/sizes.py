"""The size grammar of ``shm_size``: checked by the loader, turned into bytes by the launcher."""

from __future__ import annotations

import re
from typing import Final

# Docker's own grammar (go-units RAMInBytes): a number, a unit, then optional "i" and "b".
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s?([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """Bytes in a size as ``docker run --shm-size`` reads it: ``8g``, ``512m``, ``1GiB``.

    Units are binary (``1k`` is 1024 bytes), as in Docker's own parser.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (expected e.g. 512m, 8g, 1GiB)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * _UNITS[unit])
