"""The benchmark's CPU guard (bench/guard.py): which recording it compares with, and when it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import guard, report
from bench.report import PeerResult

INTEL = {"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_count": 2}
AMD = {"cpu_model": "AMD EPYC", "cpu_count": 2}


def _peers(gateway_ms: float | None, bare_ms: float | None) -> dict[str, object]:
    peers: dict[str, object] = {}
    for name, value in (("gateway", gateway_ms), ("bare", bare_ms)):
        if value is not None:
            peers[name] = {"status": "ok", "figures": {"cpu_s_per_1k_req": value}}
    return peers


def _document(gateway_ms: float | None, bare_ms: float | None, machine: dict[str, object],
              smoke: bool = False) -> dict[str, object]:
    return {"settings": {"smoke": smoke}, "machine": machine,
            "peers": _peers(gateway_ms, bare_ms)}


def test_ratio_is_gateway_over_bare_and_needs_both() -> None:
    assert guard.cpu_ratio(_peers(0.5, 0.25)) == 2.0
    assert guard.cpu_ratio(_peers(0.5, None)) is None
    assert guard.cpu_ratio({"gateway": {"figures": {"cpu_s_per_1k_req": 0.3}},
                            "bare": {"figures": {"cpu_s_per_1k_req": 0.0}}}) is None


def test_pick_prefers_the_newest_full_run_of_the_same_kind() -> None:
    kind = guard.machine_kind(AMD)
    documents = [
        ("proxy-1.json", _document(0.6, 0.2, AMD)),
        ("proxy-2.json", _document(0.5, 0.25, AMD)),
        ("proxy-3.json", _document(0.9, 0.3, INTEL)),
        ("proxy-4-smoke.json", _document(2.0, 0.2, AMD, smoke=True)),
        ("proxy-5.json", _document(0.5, None, AMD)),  # no bare row: says nothing
    ]
    picked = guard.pick(documents, kind)
    assert picked is not None and picked.path == "proxy-2.json" and picked.ratio == 2.0
    other = guard.pick(documents[2:4], kind)
    assert other is not None and other.kind == guard.machine_kind(INTEL)
    assert guard.pick([], kind) is None


def test_decide_fails_only_above_twice_the_recorded_ratio() -> None:
    kind = guard.machine_kind(AMD)
    reference = guard.Recording("bench/results/proxy-1.json", kind, 1.5)
    assert guard.decide(3.0, reference, kind).ok  # exactly 2x is still within
    failed = guard.decide(3.01, reference, kind)
    assert not failed.ok and failed.checked and "FAILED" in failed.text
    assert "limit 3.00" in failed.text and "proxy-1.json" in failed.text
    assert "recorded on" not in failed.text


def test_decide_says_when_it_cannot_check_or_borrows_another_kind() -> None:
    kind = guard.machine_kind(AMD)
    unmeasured = guard.decide(None, None, kind)
    assert unmeasured.ok and not unmeasured.checked
    nothing = guard.decide(2.0, None, kind)
    assert nothing.ok and not nothing.checked and "nothing recorded" in nothing.text
    borrowed = guard.decide(2.0, guard.Recording("p.json", guard.machine_kind(INTEL), 1.8), kind)
    assert borrowed.ok and borrowed.checked and "recorded on Intel" in borrowed.text


def test_recorded_reads_the_results_folder(tmp_path: Path) -> None:
    (tmp_path / "proxy-20260101-000000.json").write_text(json.dumps(_document(0.4, 0.2, AMD)))
    (tmp_path / "proxy-20260102-000000.json").write_text("not json")
    (tmp_path / "trace-20260103-000000.json").write_text(json.dumps(_document(9.0, 1.0, AMD)))
    found = guard.recorded(tmp_path, guard.machine_kind(AMD))
    assert found is not None and found.ratio == 2.0


def test_the_guard_reads_what_the_report_writes() -> None:
    results = {
        "bare": PeerResult("bare", figures={"cpu_s_per_1k_req": 0.2}),
        "gateway": PeerResult("gateway", figures={"cpu_s_per_1k_req": 0.3}),
    }
    peers = report.as_json(results)
    assert guard.cpu_ratio(peers) == pytest.approx(1.5)
    assert report.ratios_to(results, "bare")["gateway"]["cpu_s_per_1k_req"] == pytest.approx(1.5)
