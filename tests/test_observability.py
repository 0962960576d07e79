"""What an operator sees: Prometheus metrics, request and lifecycle logs, model output,
loading comments on streams, and the Grafana dashboard. Real gateway, fake backends."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from harness import GatewayProc, Start, chat, fake_command, sse_events
from helpers import scrape, wait_until
from prometheus_client.parser import text_string_to_metric_families

from vllm_gateway.metrics import Metrics
from vllm_gateway.proxy import UsageCounter

GPU = [{"id": 0, "vram_gb": 24}]
STATES = ("stopped", "starting", "ready", "draining", "sleeping", "waking", "stopping", "failed",
          "backoff", "held")
DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, gw: GatewayProc) -> None:
        self.families = list(text_string_to_metric_families(scrape(gw.url, timeout=10)))
        self.samples = [s for f in self.families for s in f.samples]

    def _found(self, name: str, labels: dict[str, str]) -> list[float]:
        found = [float(s.value) for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found

    def get(self, name: str, **labels: str) -> float:
        """The one sample with exactly these labels; fails when there is none."""
        found = self._found(name, labels)
        assert found, f"no sample {name} {labels}"
        return found[0]

    def has(self, name: str, **labels: str) -> bool:
        return bool(self._found(name, labels))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for s in self.samples if s.name == name}

    def names(self) -> set[str]:
        """Every sample name the gateway exports or declares (a family may have no series yet)."""
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                    "summary": ["_count", "_sum"]}
        out = {s.name for s in self.samples}
        for f in self.families:
            out.update(f.name + sfx for sfx in suffixes.get(f.type, [""]))
        return out


def post(gw: GatewayProc, path: str, body: dict[str, Any], rid: str) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"X-Request-ID": rid}, timeout=60)


def access_line(gw: GatewayProc, rid: str) -> re.Match[str]:
    """The one text log line of request ``rid`` (written just after its answer)."""
    pattern = re.compile(rf"^.* INFO +vllm_gateway\.access: {rid} POST (?P<path>\S+) "
                         r"model=(?P<model>\S+) status=(?P<status>\d+) queue=(?P<queue>\S+) "
                         r"ttfb=(?P<ttfb>\S+) duration=(?P<duration>\S+) bytes=(?P<bytes>\d+)",
                         re.MULTILINE)
    wait_until(lambda: pattern.search(gw.log()), 10, what=f"the log line of request {rid}")
    matches = list(pattern.finditer(gw.log()))
    assert len(matches) == 1, [m.group(0) for m in matches]
    return matches[0]


def test_metrics_request_log_and_model_output_after_known_traffic(gateway: Start) -> None:
    gw = gateway({"alpha": {"command": fake_command(), "vram_gb": 10}}, gpus=GPU)
    r1 = post(gw, "/v1/chat/completions", chat("alpha", max_tokens=5), "obs-1")
    r2 = post(gw, "/v1/completions", {"model": "alpha", "prompt": "one two three", "max_tokens": 3},
              "obs-2")
    r3 = post(gw, "/v1/chat/completions",
              chat("alpha", stream=True, max_tokens=4, stream_options={"include_usage": True}),
              "obs-3")
    r4 = post(gw, "/v1/no-such-endpoint", chat("alpha"), "obs-4")  # the backend answers 404
    r5 = post(gw, "/v1/chat/completions", chat("nope"), "obs-5")  # the gateway answers 404
    assert [r.status_code for r in (r1, r2, r3, r4, r5)] == [200, 200, 200, 404, 404]
    usages = [r1.json()["usage"], r2.json()["usage"],
              *[e["usage"] for e in sse_events(r3.text) if e.get("usage")]]
    assert len(usages) == 3

    m = Scrape(gw)
    assert m.series("vllm_gateway_requests_total") == {
        (("code", "200"), ("model", "alpha")): 3.0,
        (("code", "404"), ("model", "alpha")): 1.0,
        # An unknown model never becomes a label value (callers choose those names).
        (("code", "404"), ("model", "")): 1.0,
    }
    for kind in ("prompt", "completion"):
        assert m.get("vllm_gateway_tokens_total", model="alpha", kind=kind) == sum(
            u[f"{kind}_tokens"] for u in usages)
    for hist in ("queue_wait_seconds", "time_to_first_byte_seconds", "request_duration_seconds"):
        assert m.get(f"vllm_gateway_{hist}_count", model="alpha") == 4.0, hist
        assert m.get(f"vllm_gateway_{hist}_bucket", model="alpha", le="+Inf") == 4.0, hist
    # The first request waited for the start; its wait and duration include it.
    status = gw.model("alpha")
    assert m.get("vllm_gateway_queue_wait_seconds_sum", model="alpha") >= status["last_start_s"]
    assert m.get("vllm_gateway_model_starts_total", model="alpha") == 1.0
    assert m.get("vllm_gateway_model_start_seconds_count", model="alpha") == 1.0
    assert abs(m.get("vllm_gateway_model_start_seconds_sum", model="alpha")
               - status["last_start_s"]) < 0.01
    assert m.get("vllm_gateway_model_failures_total", model="alpha") == 0.0
    assert {s: m.get("vllm_gateway_model_state", model="alpha", state=s) for s in STATES} == {
        s: 1.0 if s == "ready" else 0.0 for s in STATES}
    assert m.get("vllm_gateway_requests_in_flight", model="alpha") == 0.0
    assert m.get("vllm_gateway_requests_queued", model="alpha") == 0.0
    assert m.get("vllm_gateway_gpu_memory_total_gb", gpu="0") == 24.0
    assert m.get("vllm_gateway_gpu_memory_placed_gb", gpu="0") == 10.0
    # Declared GPUs have no driver reading, so that family has no series.
    assert m.series("vllm_gateway_gpu_memory_driver_used_gb") == {}
    assert "vllm_gateway_gpu_memory_driver_used_gb" in m.names()
    assert m.get("vllm_gateway_process_resident_memory_bytes") > 10 * 2**20
    assert m.get("vllm_gateway_process_cpu_seconds_total") > 0

    # One INFO line per request: id, model, status, queue wait, time to first byte, duration
    # and the bytes the client received.
    expected = {"obs-1": (r1, "/v1/chat/completions", "alpha"),
                "obs-2": (r2, "/v1/completions", "alpha"),
                "obs-3": (r3, "/v1/chat/completions", "alpha"),
                "obs-4": (r4, "/v1/no-such-endpoint", "alpha"),
                "obs-5": (r5, "/v1/chat/completions", "-")}
    ms = re.compile(r"\d+\.\dms")
    for rid, (resp, path, model) in expected.items():
        line = access_line(gw, rid)
        assert (line["path"], line["model"], int(line["status"]), int(line["bytes"])) == (
            path, model, resp.status_code, len(resp.content)), line.group(0)
        assert ms.fullmatch(line["duration"]), line.group(0)
        timed = model != "-"  # an unknown model never waits nor reaches a backend
        assert bool(ms.fullmatch(line["queue"])) is timed and bool(ms.fullmatch(line["ttfb"])) is timed

    # The model server's recent output.
    everything = httpx.get(gw.url + "/gateway/models/alpha/logs?lines=1000").json()
    assert everything["name"] == "alpha" and everything["state"] == "ready"
    assert "INFO:     Application startup complete." in everything["lines"]
    last3 = httpx.get(gw.url + "/gateway/models/alpha/logs", params={"lines": 3}).json()["lines"]
    assert len(last3) == 3 and everything["lines"][-3:] == last3
    assert httpx.get(gw.url + "/gateway/models/alpha/logs?lines=x").status_code == 400
    missing = httpx.get(gw.url + "/gateway/models/nope/logs")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ ", re.MULTILINE)


def _log_record(log: str, needle: str) -> str:
    """The whole text log record (it may span lines) whose message holds ``needle``."""
    at = log.index(needle)
    begin = log.rfind("\n", 0, at) + 1
    following = RECORD_START.search(log, at)
    return log[begin:following.start() if following else len(log)]


def test_lifecycle_events_are_logged_once_and_counted(gateway: Start) -> None:
    models = {
        "alpha": {"command": fake_command(), "vram_gb": 10},
        "beta": {"command": fake_command(), "vram_gb": 16},  # does not fit next to alpha
        "idler": {"command": fake_command(), "idle_timeout_s": 1},
        "crashy": {"command": fake_command("--crash-after", "1")},
        "broken": {"command": fake_command("--fail-start")},
    }
    gw = gateway(models, gpus=GPU)
    codes: dict[str, int] = {}

    def call(name: str) -> None:
        codes[name] = httpx.post(gw.url + "/v1/chat/completions", json=chat(name),
                                 timeout=60).status_code

    others = [threading.Thread(target=call, args=(n,)) for n in ("idler", "crashy", "broken")]
    for t in others:
        t.start()
    call("alpha")
    assert httpx.post(gw.url + "/gateway/models/beta/load", timeout=60).json()["state"] == "ready"
    assert gw.model("alpha")["state"] == "stopped"  # evicted to make room
    assert httpx.post(gw.url + "/gateway/models/beta/unload", timeout=60).json()["state"] == "stopped"
    for t in others:
        t.join(60)
    assert codes == {"alpha": 200, "idler": 200, "crashy": 502, "broken": 503}
    gw.wait_state("idler", "stopped")
    gw.wait_state("crashy", "failed")

    wait_until(lambda: "model crashy crashed" in gw.log(), 10, what="the crash in the log")
    log = gw.log()
    once = {name: [f"model {name} starting: on port ", f"model {name} ready: in "]
            for name in ("alpha", "beta", "idler", "crashy")}
    once["alpha"] += ["model alpha evicted: stopping (lru)", "model alpha stopped: "]
    once["beta"] += ["model beta stopping: stopping (manual)", "model beta stopped: "]
    once["idler"] += ["model idler idle_stop: stopping (idle)", "model idler stopped: "]
    once["crashy"] += ["model crashy crashed: exit code 1"]
    once["broken"] = ["model broken starting: on port ", "model broken failed: "]
    for needles in once.values():
        for needle in needles:
            assert log.count(needle) == 1, f"{needle!r} logged {log.count(needle)} times:\n{log}"
    assert re.search(r"model alpha ready: in \d+\.\d\d s", log)
    assert "model broken ready" not in log
    # A failed start is logged with the server's last lines, which say why.
    failed = _log_record(log, "model broken failed: ")
    assert re.match(r"\S+ \S+ WARNING vllm_gateway\.lifecycle: model broken failed: ", failed), failed
    assert "CUDA out of memory" in failed and "EngineCore failed to start" in failed

    m = Scrape(gw)
    evictions = m.series("vllm_gateway_model_evictions_total")
    # Every model has a series per reason from the start (zero until it happens).
    assert len(evictions) == 3 * len(models)
    assert {labels: v for labels, v in evictions.items() if v} == {
        (("model", "alpha"), ("reason", "lru")): 1.0,
        (("model", "beta"), ("reason", "manual")): 1.0,
        (("model", "idler"), ("reason", "idle")): 1.0,
    }
    assert {name: m.get("vllm_gateway_model_failures_total", model=name) for name in models} == {
        "alpha": 0.0, "beta": 0.0, "idler": 0.0, "crashy": 1.0, "broken": 1.0}
    assert {name: m.get("vllm_gateway_model_starts_total", model=name) for name in models} == {
        name: 1.0 for name in models}
    # Only successful starts have a start duration.
    assert m.get("vllm_gateway_model_start_seconds_count", model="beta") == 1.0
    assert not m.has("vllm_gateway_model_start_seconds_count", model="broken")
    states = {name: next(s for s in STATES
                         if m.get("vllm_gateway_model_state", model=name, state=s) == 1.0)
              for name in models}
    assert states == {"alpha": "stopped", "beta": "stopped", "idler": "stopped",
                      "crashy": "failed", "broken": "backoff"}


def test_json_log_format_and_log_level(gateway: Start) -> None:
    gw = gateway({"alpha": {"command": fake_command()}}, args=["--log-format", "json"],
                 env={"LOG_LEVEL": "DEBUG"})
    quiet = gateway({"broken": {"command": fake_command("--fail-start")}},
                    env={"LOG_LEVEL": "WARNING"})
    r = post(gw, "/v1/chat/completions", chat("alpha"), "json-1")
    assert r.status_code == 200
    assert post(quiet, "/v1/chat/completions", chat("broken"), "quiet-1").status_code == 503
    assert gw.stop() == 0 and quiet.stop() == 0

    records = []
    for line in gw.log().splitlines():
        doc = json.loads(line)  # every line the gateway wrote is one JSON object
        assert isinstance(doc, dict) and {"time", "level", "logger", "message"} <= set(doc), line
        records.append(doc)
    [access] = [d for d in records if d.get("request_id") == "json-1"]
    assert access["level"] == "INFO" and access["logger"] == "vllm_gateway.access"
    assert (access["model"], access["status"], access["bytes"]) == ("alpha", 200, len(r.content))
    assert access["path"] == "/v1/chat/completions" and access["method"] == "POST"
    for key in ("queue_wait_ms", "ttfb_ms", "duration_ms"):
        assert isinstance(access[key], (int, float)) and access[key] >= 0, key
    assert access["queue_wait_ms"] <= access["ttfb_ms"] <= access["duration_ms"]
    [ready] = [d for d in records if d.get("event") == "ready"]
    assert ready["model"] == "alpha" and ready["message"].startswith("model alpha ready: in ")
    # LOG_LEVEL=DEBUG also shows what the model server prints.
    assert any(d["level"] == "DEBUG" and "Application startup complete." in d["message"]
               for d in records)

    # LOG_LEVEL=WARNING: warnings (a failed start) but no INFO lines, not even per request.
    text = quiet.log()
    assert "model broken failed: " in text and "CUDA out of memory" in text
    assert not re.search(r"^\S+ \S+ INFO ", text, re.MULTILINE) and "quiet-1" not in text


def test_streaming_request_gets_loading_comments_while_its_model_starts(gateway: Start) -> None:
    gw = gateway({"slow": {"command": fake_command("--max-model-len", "100", startup_delay=5)}})
    raw: list[tuple[float, str]] = []
    results: dict[str, Any] = {}

    def raw_stream() -> None:
        with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=60,
                          json=chat("slow", stream=True, max_tokens=3)) as resp:
            results["raw_status"] = resp.status_code
            for line in resp.iter_lines():
                raw.append((time.monotonic(), line))

    def openai_stream() -> None:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", timeout=60)
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=4)
        results["openai"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def refused_stream() -> None:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", timeout=60)
        try:
            list(client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "hi"}], stream=True,
                max_tokens=1000))
        except openai.APIError as exc:
            results["refused"] = exc.message

    def plain() -> None:
        resp = httpx.post(gw.url + "/v1/chat/completions", json=chat("slow"), timeout=60)
        results["plain"] = (resp.status_code, resp.headers["content-type"], resp.json())

    threads = [threading.Thread(target=f)
               for f in (raw_stream, openai_stream, refused_stream, plain)]
    for t in threads:
        t.start()
    first = gw.wait_state("slow", "starting")
    assert first["last_start_s"] is None  # never started before
    seen = [first["starting_for_s"]]
    deadline = time.monotonic() + 60
    while (m := gw.model("slow"))["state"] == "starting" and time.monotonic() < deadline:
        seen.append(m["starting_for_s"])
        time.sleep(0.5)
    for t in threads:
        t.join(60)
    assert seen == sorted(seen) and seen[-1] >= 3, seen
    ready = gw.model("slow")
    assert ready["state"] == "ready" and ready["starting_for_s"] is None
    assert ready["last_start_s"] >= 5

    lines = [(at, line) for at, line in raw if line]
    comments = [(at, line) for at, line in lines if line.startswith(":")]
    first_data = next(i for i, (_, line) in enumerate(lines) if line.startswith("data:"))
    assert results["raw_status"] == 200
    assert comments == lines[:first_data], "comments come first, then only data"
    assert len(comments) >= 2, lines
    for i, (at, line) in enumerate(comments):
        match = re.fullmatch(r": loading model slow, (\d+) s", line)
        assert match, line
        assert abs(int(match[1]) - 2 * (i + 1)) <= 1, comments
        if i:
            assert at - comments[i - 1][0] > 1.2, comments
    assert [e for _, e in lines[first_data:]][-1] == "data: [DONE]"
    assert sum(" tok" in line for _, line in lines) == 3
    assert results["openai"].split() == ["tok0", "tok1", "tok2", "tok3"]
    # The backend's refusal, after the loading comments went out with status 200, arrives as
    # an error event that the client raises (not as raw JSON it would silently skip).
    assert "maximum context length is 100 tokens" in results["refused"]
    status, content_type, body = results["plain"]
    assert status == 200 and content_type.startswith("application/json")
    assert body["choices"][0]["message"]["content"]


def test_grafana_dashboard_queries_only_exported_metrics(gateway: Start) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    queried = set(re.findall(r"\bvllm_gateway_[a-z0-9_]+", DASHBOARD.read_text()))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all(re.search(r"\bvllm_gateway_", e) for e in exprs)
    gw = gateway({"alpha": {"command": fake_command(), "vram_gb": 10}}, gpus=GPU)
    exported = Scrape(gw).names()
    assert queried - exported == set(), f"the dashboard queries unknown metrics: {queried - exported}"
    # Each of the gateway's own metric families has a panel, and so do its memory and CPU.
    families = {f.name for f in Scrape(gw).families if f.name.startswith("vllm_gateway_")
                and "_process_" not in f.name and not f.name.endswith("_created")}
    families |= {"vllm_gateway_process_resident_memory_bytes", "vllm_gateway_process_cpu_seconds"}
    unused = {f for f in families if not any(q == f or q.startswith(f + "_") for q in queried)}
    assert unused == set(), f"metrics without a panel: {unused}"


def test_stream_usage_is_counted_however_the_stream_is_split() -> None:
    events = [b'data: {"choices":[{"delta":{"content":" tok%d"}}]}\n\n' % i for i in range(300)]
    stream = b"".join(events) + (b'data: {"choices":[],"usage":{"prompt_tokens":7,'
                                 b'"completion_tokens":300}}\n\ndata: [DONE]\n\n')
    for size in (1, 5, 7, 64, 4000, len(stream)):
        metrics = Metrics()
        counter = UsageCounter(metrics, "m")
        for at in range(0, len(stream), size):
            counter.feed(stream[at:at + size])
        counter.finish()
        counted = {kind: metrics.registry.get_sample_value(
            "vllm_gateway_tokens_total", {"model": "m", "kind": kind})
            for kind in ("prompt", "completion")}
        assert counted == {"prompt": 7, "completion": 300}, size
