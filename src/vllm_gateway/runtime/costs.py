"""What bringing a model back costs: learned load times and recent request rates.

Every start and wake is timed per model; the moving median of the last few is
the expected load time (shown in status as ``expected_load_s``, the default
patience of requests waiting for room, and half of the planner's reload cost).
The figures are kept in the state dir so a restarted gateway does not forget them.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from pathlib import Path

from . import state_file

WHAT = "learned load times"
WINDOW = 9  # loads per model and kind in the moving median
RATE_HALF_LIFE_S = 300.0


class DecayingRate:
    """Requests per second with exponential decay (half-life ``RATE_HALF_LIFE_S``)."""

    def __init__(self) -> None:
        self._value = 0.0
        self._at = 0.0

    def observe(self, now: float) -> None:
        self._value = self.at(now) + 1.0 / RATE_HALF_LIFE_S * math.log(2)
        self._at = now

    def at(self, now: float) -> float:
        if self._value == 0.0:
            return 0.0
        decay: float = 0.5 ** (max(now - self._at, 0.0) / RATE_HALF_LIFE_S)
        return self._value * decay


class LoadCosts:
    """Per model and kind ("start" or "wake"): the last ``WINDOW`` load times, in seconds."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._times: dict[str, dict[str, deque[float]]] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        data = state_file.read(path, WHAT)
        if not isinstance(data, dict):
            return
        for model, kinds in data.items():
            if not isinstance(kinds, dict):
                continue
            for kind, values in kinds.items():
                if isinstance(values, list):
                    good = [float(v) for v in values if isinstance(v, (int, float)) and v >= 0]
                    self._series(str(model), str(kind)).extend(good[-WINDOW:])

    def _series(self, model: str, kind: str) -> deque[float]:
        return self._times.setdefault(model, {}).setdefault(kind, deque(maxlen=WINDOW))

    def record(self, model: str, kind: str, seconds: float) -> None:
        self._series(model, kind).append(round(seconds, 3))
        self._save()

    def expected(self, model: str, kind: str = "start") -> float | None:
        series = self._times.get(model, {}).get(kind)
        return statistics.median(series) if series else None

    def _save(self) -> None:
        if self._path is None:
            return
        data = {m: {k: list(v) for k, v in kinds.items()} for m, kinds in self._times.items()}
        state_file.write(self._path, data, WHAT)
