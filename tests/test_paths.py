"""Raw request paths against a real gateway: only ``/v1/*`` reaches a model server.

Paths are sent as raw bytes (httpx and most clients would normalise them first), and
the fake backend's request log shows what reached it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from harness import GatewayProc, chat, fake_command
from security_helpers import check_error, running, send_raw

# Each tries to leave /v1/ (or to hide a path from one of its readers) in another spelling.
ESCAPES = [
    "/v1/../fake/hang",
    "/v1/%2e%2e/fake/hang",
    "/v1/%2E%2e/fake/hang",
    "/v1/.%2E/fake/hang",
    "/v1/%2e./fake/hang",
    "/v1/chat/../../fake/hang",
    "/v1/chat/completions/..",
    "/v1/./chat/completions",  # a dot segment that stays inside /v1/ is refused too
    "/v1/..;/fake/hang",
    "/v1%2f..%2ffake%2fhang",
    "/v1/%2F..%2Ffake/hang",
    "/v1/chat%2fcompletions",  # an encoded slash, even a harmless one
    "/v1//../fake/hang",
    "/v1//chat/completions",
    "//v1/chat/completions",
    "/v1\\..\\fake\\hang",
    "/v1/chat\\completions",
    "/v1/%5c..%5cfake/hang",
    "/v1/%5C%2e%2E%5Cfake/hang",
    "/v1/..\\fake/hang",
    "/v1/%2e%2e//fake/hang",
    "/v1/%252e%252e/fake/hang",
    "/v1/%2e%2e%2f%2e%2e%2ffake/hang?x=1",
    "/v1/%00/../fake/hang",
    "http://127.0.0.1/v1/../fake/hang",
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    models = {"alpha": {"command": fake_command(worker=False), "aliases": ["a"]}}
    with running(tmp_path_factory.mktemp("paths"), models) as gateway:
        with gateway.client() as client:  # the backend runs from here on
            assert client.post("/v1/chat/completions", json=chat("alpha")).status_code == 200
        yield gateway


def backend(gw: GatewayProc, path: str) -> Any:
    port = gw.model("alpha")["port"]
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).json()


def received(gw: GatewayProc) -> list[str]:
    """What the backend was sent, but the gateway's health and metrics reads."""
    return [f"{r['method']} {r['target']}" for r in backend(gw, "/fake/requests")
            if r["method"] != "GET"]


def post_raw(gw: GatewayProc, target: str, body: bytes,
             extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    head = (f"POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode()
    return send_raw(gw.port, head + extra + b"\r\n" + body)


@pytest.mark.parametrize("target", ESCAPES)
def test_a_path_that_is_not_plainly_under_v1_is_400_and_never_forwarded(
        gw: GatewayProc, target: str) -> None:
    before = received(gw)
    status, headers, body = post_raw(gw, target, json.dumps({"model": "alpha"}).encode())
    error = check_error(status, headers, body, 400)
    assert error["code"] == "invalid_path" and error["param"] is None
    assert "request path" in error["message"], error
    assert received(gw) == before
    assert gw.model("alpha")["state"] == "ready"


def test_the_refusal_names_the_path_and_the_form_to_send(gw: GatewayProc) -> None:
    status, headers, body = post_raw(gw, "/v1//chat/completions", b'{"model": "alpha"}')
    message = check_error(status, headers, body, 400)["message"]
    assert "'/v1//chat/completions'" in message and "send '/v1/chat/completions'" in message
    status, headers, body = post_raw(gw, "/v1/%2E%2e/fake/hang", b'{"model": "alpha"}')
    assert "'/v1/%2E%2e/fake/hang'" in check_error(status, headers, body, 400)["message"]


def test_the_backend_stays_healthy_after_every_attempt(gw: GatewayProc) -> None:
    for target in ESCAPES:
        post_raw(gw, target, b'{"model": "alpha"}')
    stats = backend(gw, "/fake/stats")
    assert not any(r["target"].startswith("/fake/hang") for r in backend(gw, "/fake/requests"))
    with gw.client() as client:
        r = client.post("/v1/chat/completions", json=chat("alpha"))
    assert r.status_code == 200
    assert backend(gw, "/fake/stats")["requests"] == stats["requests"] + 1


def test_a_well_formed_request_is_forwarded_byte_for_byte(gw: GatewayProc) -> None:
    # Odd spacing, key order and escapes: the body is never re-serialised when the model
    # is named by its own name, and the path and query go as they came.
    body = b'{ "messages":[{"content":"h\\u00e9llo \xc3\xa9","role":"user"}] ,"model" : "alpha"}'
    before = received(gw)
    status, _, answer = post_raw(gw, "/v1/chat/completions?api-version=2024-01", body)
    assert status == 200, answer[:300]
    assert received(gw) == [*before, "POST /v1/chat/completions?api-version=2024-01"]
    last = backend(gw, "/fake/last_request")
    assert last["path"] == "/v1/chat/completions"
    assert last["raw"].encode() == body


def test_escaped_plain_characters_are_forwarded_as_one_reading(gw: GatewayProc) -> None:
    # %63 is "c": decoded once, and forwarded as the path every reader agrees on.
    before = received(gw)
    status, _, answer = post_raw(gw, "/v1/%63hat/completions", json.dumps(chat("alpha")).encode())
    assert status == 200, answer[:300]
    assert received(gw) == [*before, "POST /v1/chat/completions"]


MODEL_ROUTES = [
    ("POST", "/gateway/models/%2e%2e/load"),
    ("POST", "/gateway/models/alpha%2F..%2F..%2Fv1/unload"),
    ("POST", "/gateway/models/../models/alpha/unload"),
    ("GET", "/gateway/models/alpha/../../status/logs"),
    ("GET", "/gateway/models/%2e%2e%5calpha/logs?lines=5"),
    ("GET", "/gateway/status/.."),
    ("GET", "/gateway/events/%2e?since=0"),
]


@pytest.mark.parametrize(("method", "target"), MODEL_ROUTES)
def test_the_gateways_own_routes_refuse_the_same_paths(gw: GatewayProc, method: str,
                                                        target: str) -> None:
    head = f"{method} {target} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n".encode()
    status, headers, body = send_raw(gw.port, head)
    assert check_error(status, headers, body, 400)["code"] == "invalid_path"
    assert gw.model("alpha")["state"] == "ready"
