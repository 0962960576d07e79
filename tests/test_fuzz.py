"""Fuzzing a real gateway: schemathesis against its published OpenAPI document, hypothesis
throwing random bytes, random JSON, random request ids and random raw paths at the proxy path.

Whatever arrives, the answer is a documented status (never a 5xx from the gateway itself),
errors are OpenAI-shaped, nothing is logged as an unhandled exception, and afterwards the
counters are back at 0 and /health answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import GatewayProc, chat, fake_command, start_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_helpers import send_raw

from vllm_gateway.web.paths import InvalidPath, normalise

# schemathesis (4.32.5, a test dependency) is run through its command line, as a user would.
SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance," \
         "response_schema_conformance"
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
PROXY_PATHS = [*OPENAI_PATHS, "/v1/fuzz/route"]
MODEL_NAMES = ["alpha", "a"]
# Fields that would make the fake backend misbehave on purpose (stall, fail, generate long).
STEERING = {"fake", "max_tokens", "max_completion_tokens"}
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    models = {"alpha": {"command": fake_command(worker=False, startup_delay=0.05),
                        "aliases": ["a"], "max_concurrent": 4, "max_queue": 8}}
    gateway = start_gateway(tmp_path_factory.mktemp("fuzz"), models,
                            server={"max_body_mb": 0.05, "shutdown_timeout_s": 5})
    try:
        yield gateway
    finally:
        assert gateway.stop() == 0
        assert not gateway.model_pids()


def assert_unharmed(gw: GatewayProc) -> None:
    gw.wait_counters_zero()
    assert httpx.get(gw.url + "/health", timeout=10).json() == {"status": "ok"}
    # aiohttp logs a handler's unexpected exception with its traceback (and answers 500).
    # Its HTTP parser logs malformed requests (schemathesis probes for some) the same way,
    # but those tracebacks never pass through the gateway's code.
    assert not re.search(r'File "[^"]*vllm_gateway[/\\]', gw.log()), gw.log()[-4000:]


def assert_answer_ok(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        # The gateway's errors and the backend's (vLLM's shape) both carry error.message.
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], r.text[:300]
        assert r.headers["Content-Type"].startswith("application/json")


def test_schemathesis_against_the_published_openapi(gw: GatewayProc, tmp_path: Path) -> None:
    # Half of the generated model names are real ones, so requests reach the backend and
    # the load and unload endpoints act on the model (its start is then documented as well).
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f"[dictionaries.models]\nvalues = {json.dumps(MODEL_NAMES)}\n\n"
        "[parameters]\n"
        '"body.model" = { dictionary = "models", probability = 0.5 }\n'
        '"path.name" = { dictionary = "models", probability = 0.5 }\n')
    command = [*SCHEMATHESIS, "--config-file", str(config), "--no-color", "run",
               gw.url + "/openapi.json", "--checks", CHECKS, "--max-examples", "15",
               "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "20261126",
               "--generation-database", "none", "--request-timeout", "30"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=150,
                          check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", done.stdout), done.stdout[-2000:]
    # Some of it reached the backend, not just the gateway's own validation.
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert re.search(r'vllm_gateway_requests_total\{code="[24]\d\d",model="alpha"\}', metrics)
    assert_unharmed(gw)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)
MESSAGES = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]), "content": st.text(max_size=40)}),
    min_size=1, max_size=3)
# Mostly real names, so most requests get past the gateway's own checks to the backend.
REAL_MODEL = st.sampled_from(MODEL_NAMES)
MODEL = st.one_of(REAL_MODEL, REAL_MODEL, REAL_MODEL, st.text(max_size=12), JSON_VALUES)
REQUESTS = st.fixed_dictionaries(
    # What each endpoint needs is there, mostly well-formed, so most requests are answered.
    {"model": MODEL, "messages": MESSAGES | MESSAGES | JSON_VALUES,
     "prompt": st.text(max_size=40) | JSON_VALUES, "input": st.text(max_size=40) | JSON_VALUES},
    optional={"stream": st.booleans() | JSON_VALUES,
              "stream_options": st.just({"include_usage": True}) | JSON_VALUES,
              "max_tokens": st.integers(-2, 6) | JSON_SCALARS.filter(
                  lambda v: not isinstance(v, int) or -2 <= v <= 6),
              "temperature": JSON_SCALARS}
).flatmap(lambda doc: st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in STEERING and k not in doc), JSON_VALUES,
    max_size=3).map(lambda extra: {**doc, **extra}))


@FUZZ
@given(doc=st.one_of(REQUESTS, REQUESTS, REQUESTS, JSON_VALUES), path=st.sampled_from(PROXY_PATHS))
def fuzz_json(client: httpx.Client, doc: Any, path: str) -> None:
    # json.dumps writes NaN and Infinity, which Python's JSON reader (the gateway's) accepts.
    r = client.post(path, content=json.dumps(doc).encode(),
                    headers={"Content-Type": "application/json"})
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
        assert r.status_code == 400
    elif doc["model"] not in MODEL_NAMES:
        assert r.status_code == 404
    elif path not in OPENAI_PATHS:
        # Routed, and the backend's own answer (a plain "404: Not Found") passed through.
        assert r.status_code == 404
        return
    assert_answer_ok(r)


def test_random_json_at_the_proxy_path(gw: GatewayProc) -> None:
    with gw.client(timeout=30) as client:
        fuzz_json(client)
    assert_unharmed(gw)


@FUZZ
@given(body=st.binary(max_size=4096) | st.builds(
           bytes.__mul__, st.binary(min_size=1, max_size=64), st.integers(1_000, 5_000)),
       path=st.sampled_from(PROXY_PATHS),
       content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www"]))
def fuzz_bytes(client: httpx.Client, body: bytes, path: str, content_type: str) -> None:
    r = client.post(path, content=body, headers={"Content-Type": content_type})
    assert_answer_ok(r)
    if len(body) > 0.05 * 1024 * 1024:
        assert r.status_code == 413


def test_random_bytes_at_the_proxy_path(gw: GatewayProc) -> None:
    with gw.client(timeout=30) as client:
        fuzz_bytes(client)
    assert_unharmed(gw)


# Header values as bytes: visible ASCII and the rest of Latin-1 (what HTTP lets through).
HEADER_VALUES = st.binary(min_size=1, max_size=200).map(
    lambda raw: bytes(b if 0x21 <= b <= 0x7e or b >= 0x80 else 0x41 for b in raw))


@FUZZ
@given(request_id=HEADER_VALUES)
def fuzz_request_ids(client: httpx.Client, request_id: bytes) -> None:
    r = client.post("/v1/chat/completions", json={"model": "nope"},
                    headers={b"X-Request-ID": request_id})
    assert r.status_code == 404
    echoed = r.headers["X-Request-ID"]
    if re.fullmatch(rb"[\x21-\x7e]{1,128}", request_id):
        assert echoed == request_id.decode()
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_random_request_ids(gw: GatewayProc) -> None:
    with gw.client(timeout=30) as client:
        fuzz_request_ids(client)
    assert_unharmed(gw)


# Pieces of raw paths: real segments, dot segments and every spelling of a dot or a slash.
PATH_PIECES = st.sampled_from([
    "chat", "completions", "embeddings", "fake", "hang", "models", "/", "//", "\\", ".", "..",
    "...", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2f", "%2F", "%5c", "%5C", "%25", "%252e",
    "%252f", ";", "%3b", "%3f", "%C3%A4", "%ff", "%00", "%", "~", "@", ":"])
RAW_TARGETS = st.builds(
    lambda prefix, parts, query: prefix + "".join(parts) + query,
    st.sampled_from(["/v1/", "/v1", "//v1/", "/v1\\", "/v1/chat/", "/"]),
    st.lists(PATH_PIECES, max_size=8), st.sampled_from(["", "?x=1", "?x=%2e%2e/../y"]))


def dot_like(target: str) -> bool:
    """True when a segment reads as a dot segment once escapes and backslashes are read."""
    path = target.partition("?")[0].lower().replace("%2e", ".").replace("\\", "/")
    return any(s.split(";")[0] in (".", "..") for s in path.replace("%5c", "/").split("/"))


@FUZZ
@given(target=RAW_TARGETS)
def fuzz_paths(gw: GatewayProc, target: str) -> None:
    body = json.dumps(chat("alpha")).encode()
    head = (f"POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    status, headers, answer = send_raw(gw.port, head + body)
    assert status < 500, (target, status, answer[:300])
    if status >= 400:
        # aiohttp's own parser refuses some targets before the gateway sees them (plain 400),
        # and the fake backend's unknown routes pass through (plain 404).
        if headers.get("Content-Type", "").startswith("application/json"):
            assert json.loads(answer)["error"]["message"], answer[:300]
        else:
            assert status in (400, 404), (target, status, answer[:300])
    if dot_like(target) or re.search(r"%(2f|5c)", target.partition("?")[0], re.IGNORECASE):
        assert status == 400, (target, status, answer[:300])


def test_random_raw_paths_reach_nothing_outside_v1(gw: GatewayProc) -> None:
    with gw.client(timeout=30) as client:
        assert client.post("/v1/chat/completions", json=chat("alpha")).status_code == 200
    fuzz_paths(gw)
    port = gw.model("alpha")["port"]
    seen = httpx.get(f"http://127.0.0.1:{port}/fake/requests", timeout=10).json()
    forwarded = [r["target"] for r in seen if r["method"] == "POST"]
    assert len(forwarded) > 5, forwarded  # some got through, to paths under /v1/
    for target in forwarded:
        path = target.partition("?")[0]
        assert path.startswith("/v1/"), target
        try:
            assert normalise(path).path.startswith("/v1/"), target
        except InvalidPath as refused:
            raise AssertionError(f"{target} reached the backend: {refused.message}") from None
    assert_unharmed(gw)
