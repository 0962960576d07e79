"""The proxy benchmark harness (bench/): its pure parts, and one smoke run end to end.

Timings are never asserted: the smoke run only shows that every phase ran, the
answers were checked and the figures were recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.placement import plan
from bench.report import PeerResult
from bench.stats import percentile
from bench.stream_load import chunk_tokens
from bench.wrk import _lua_string, parse_output, wrk_path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_percentile_interpolates_and_handles_empty() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0


def test_placement_gives_the_proxy_its_own_cpu_when_there_are_two() -> None:
    assert plan([0]).proxy is None
    two = plan([0, 1])
    assert two.proxy == (0,) and two.load == (1,) and two.upstream == (1,)
    four = plan([0, 1, 2, 3])
    assert four.proxy == (0,) and four.upstream == (1,) and four.load == (2, 3)


def test_lua_long_strings_survive_any_text() -> None:
    for text in ('{"a": "b"}', "x]]y", "x]=]y]==]z", ""):
        quoted = _lua_string(text)
        level = quoted.index("[", 1) - 1
        closing = "]" + "=" * level + "]"
        assert quoted.endswith(closing) and closing not in quoted[: -len(closing)]


def test_wrk_summary_is_read_from_its_json_line() -> None:
    out = (
        "Running 1s test\n  7975 requests in 1.10s\n"
        'WRK_JSON {"requests": 200, "duration_us": 2000000, "errors": 1, "non2xx": 2, '
        '"p50_us": 1500, "p99_us": 9000, "mean_us": 2000.5}\n'
    )
    result = parse_output(out)
    assert result.rps == 100.0
    assert (result.p50_ms, result.p99_ms) == (1.5, 9.0)
    assert not result.ok


def test_stream_chunks_count_only_content() -> None:
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n'
    token = b'data: {"choices":[{"index":0,"delta":{"content":" tok1"}}]}\n'
    assert chunk_tokens(role) == 0
    assert chunk_tokens(token) == 1
    assert chunk_tokens(b"\n") == 0
    assert chunk_tokens(b"data: [DONE]\n") is None


def _results() -> dict[str, PeerResult]:
    return {
        "direct": PeerResult("direct", figures={"rps_c64": 10000.0, "p50_ms_c1": 5.0}),
        "nginx": PeerResult("nginx", figures={"rps_c64": 9000.0, "p50_ms_c1": 5.1}),
        "gateway": PeerResult(
            "gateway",
            figures={"rps_c64": 6000.0, "p50_ms_c1": 5.3, "cpu_s_per_1k_req": 0.3},
        ),
        "litellm": PeerResult("litellm", figures={"rps_c64": 100.0, "p50_ms_c1": 14.0}),
    }


def test_ratios_and_derived_figures() -> None:
    results = _results()
    report.add_derived(results)
    assert results["gateway"].figures["added_p50_ms_c1"] == pytest.approx(0.3)
    to_litellm = report.ratios_to(results, "litellm")
    assert to_litellm["gateway"]["rps_c64"] == 60.0
    assert report.ratios_to(results, "direct")["nginx"]["rps_c64"] == 0.9


def test_targets_pass_fail_and_not_measured() -> None:
    results = _results()
    report.add_derived(results)
    verdicts = {row["name"]: row["verdict"] for row in report.evaluate_targets(results)}
    assert verdicts["rps_vs_litellm"] == "PASS"  # 60x
    assert verdicts["rps_vs_nginx"] == "PASS"  # 0.67x
    assert verdicts["added_latency"] == "PASS"  # 0.3 ms
    assert verdicts["cpu_per_request"] == "FAIL"  # 0.3 ms > 0.25
    assert verdicts["swap_overhead"] == "n/a"


def test_table_shows_values_and_both_ratios() -> None:
    results = _results()
    results["litellm"] = PeerResult("litellm", "skipped", "not installed")
    table = report.render_table(results)
    assert "req/s, 64 concurrent" in table and "6,000" in table
    assert "vs direct" in table and "0.60x" in table
    assert "litellm: skipped: not installed" in table


@pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed")
def test_smoke_run_checks_answers_and_records_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.proxy", "--smoke", "--only", "direct,bare,gateway"]
        + ["--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answers as direct does" in done.stdout
    assert "targets (informative, never asserted)" in done.stdout
    (written,) = tmp_path.glob("proxy-*-smoke.json")
    document = json.loads(written.read_text())
    gateway = document["peers"]["gateway"]
    assert document["peers"]["direct"]["status"] == "ok"
    assert gateway["status"] == "ok", gateway["note"]
    for key in ("rps_c64", "p50_ms_c1", "tok_s_c32", "cpu_s_per_1k_req", "rss_peak_mb"):
        assert isinstance(gateway["figures"][key], float), key
    assert isinstance(gateway["figures"]["swap_overhead_ms"], float)
    assert gateway["ratio_to_direct"]["rps_c64"] is not None
    assert document["peers"]["bare"]["status"] == "ok", document["peers"]["bare"]["note"]
    assert gateway["ratio_to_bare"]["cpu_s_per_1k_req"] is not None
    # Nothing is recorded in a fresh results folder: the guard says so and passes.
    assert document["guard"]["ok"] and not document["guard"]["checked"]
    assert "guard: gateway/bare CPU per request" in done.stdout
