"""The CPU regression guard: the gateway's CPU per request against the bare proxy's.

Absolute CPU times move with the machine and with whatever else runs on it, so the
guard compares a ratio measured within one run: the gateway's CPU per request over the
bare proxy's (the same stack with none of the gateway's work). A run fails the guard when
that ratio is above ``FACTOR`` times the one recorded by the newest full run under
bench/results/ on the same kind of machine (CPU model and count). Without a recording of
this kind the newest of any kind is used, and said so; without any, nothing is checked.

Everything here but :func:`recorded` is pure, so the decision is tested without running.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

FACTOR = 2.0
KEY = "cpu_s_per_1k_req"


@dataclass(frozen=True)
class Recording:
    path: str
    kind: str
    ratio: float


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: bool
    text: str
    ratio: float | None = None
    reference: Recording | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "text": self.text,
            "ratio": self.ratio,
            "factor": FACTOR,
            "reference": None if self.reference is None else vars(self.reference),
        }


def machine_kind(machine: Mapping[str, object]) -> str:
    return f"{machine.get('cpu_model', 'unknown')}, {machine.get('cpu_count', '?')} CPUs"


def cpu_ratio(peers: Mapping[str, object]) -> float | None:
    """Gateway over bare CPU per request, from a result document's ``peers``."""
    values = []
    for name in ("gateway", "bare"):
        peer = peers.get(name)
        figures = peer.get("figures") if isinstance(peer, Mapping) else None
        value = figures.get(KEY) if isinstance(figures, Mapping) else None
        if not isinstance(value, (int, float)) or value <= 0:
            return None
        values.append(float(value))
    return values[0] / values[1]


def pick(documents: Sequence[tuple[str, Mapping[str, object]]], kind: str) -> Recording | None:
    """The newest full run with both rows, of ``kind`` if any (documents oldest first)."""
    found: list[Recording] = []
    for path, document in documents:
        settings = document.get("settings")
        if isinstance(settings, Mapping) and settings.get("smoke"):
            continue
        peers, machine = document.get("peers"), document.get("machine")
        if not isinstance(peers, Mapping) or not isinstance(machine, Mapping):
            continue
        value = cpu_ratio(peers)
        if value is not None:
            found.append(Recording(path, machine_kind(machine), value))
    same = [recording for recording in found if recording.kind == kind]
    candidates = same or found
    return candidates[-1] if candidates else None


def decide(ratio: float | None, reference: Recording | None, kind: str) -> Verdict:
    if ratio is None:
        return Verdict(True, False, "guard: not checked (gateway or bare CPU not measured)")
    shown = f"gateway/bare CPU per request {ratio:.2f}"
    if reference is None:
        return Verdict(True, False, f"guard: {shown}; not checked: nothing recorded", ratio)
    limit = FACTOR * reference.ratio
    where = "" if reference.kind == kind else f" (recorded on {reference.kind}, not {kind})"
    ok = ratio <= limit
    text = (f"guard: {'ok' if ok else 'FAILED'}: {shown}, limit {limit:.2f} = {FACTOR:g} x "
            f"{reference.ratio:.2f} recorded in {Path(reference.path).name}{where}")
    return Verdict(ok, True, text, ratio, reference)


def recorded(results_dir: Path, kind: str) -> Recording | None:
    documents: list[tuple[str, Mapping[str, object]]] = []
    for path in sorted(results_dir.glob("proxy-*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict):
            documents.append((path.name, document))  # a name: no path of this machine
    return pick(documents, kind)
