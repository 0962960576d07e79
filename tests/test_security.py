"""Bad input and header hygiene, end to end against one shared gateway process.

Each test asserts only what a client can see, and leaves the counters at 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from harness import GatewayProc, chat, fake_command, sse_events
from security_helpers import (
    assert_settled,
    check_error,
    error_of,
    last_backend_request,
    running,
    send_raw,
    two_models,
)

LIMIT_MB = 0.01  # about 10 KB: big enough for any normal request of these tests
LIMIT_BYTES = int(LIMIT_MB * 1024 * 1024)


def open_models() -> dict[str, Any]:
    # "impatient" gives up on a silent backend after 1 s, mid-stream.
    return {**two_models(),
            "impatient": {"command": fake_command(worker=False), "request_timeout_s": 1}}


@pytest.fixture(scope="module")
def open_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    with running(tmp_path_factory.mktemp("open"), open_models(),
                 server={"max_body_mb": LIMIT_MB}) as gw:
        yield gw


# -- bad input ----------------------------------------------------------------------------


def test_body_over_the_limit_is_413_before_it_is_all_sent(open_gw: GatewayProc) -> None:
    announced = 50 * 1024 * 1024
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % announced)
    status, headers, body = send_raw(open_gw.port, head + b"{" + b" " * 1023)
    assert "max_body_mb" in check_error(status, headers, body, 413)["message"]
    assert headers.get("X-Request-ID")
    # Chunked, so no length is announced: refused once the limit is passed, with the
    # terminating chunk never sent.
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (4096, b"x" * 4096)
    status, headers, body = send_raw(open_gw.port, head + chunk * (LIMIT_BYTES // 4096 + 4))
    assert check_error(status, headers, body, 413)["code"] == "payload_too_large"
    # A whole body over the limit, sent by an ordinary client.
    big = {"model": "alpha", "prompt": "x" * (2 * LIMIT_BYTES)}
    r = httpx.post(open_gw.url + "/v1/completions", json=big, timeout=30)
    assert error_of(r, 413)["code"] == "payload_too_large"
    assert open_gw.model("alpha")["in_flight"] == 0
    assert_settled(open_gw)


BAD_BODIES: list[tuple[bytes, str]] = [
    (b"", "not valid JSON"),
    (b"not json", "not valid JSON"),
    (b'{"model": "alpha"', "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'"alpha"', "JSON object"),
    (b"42", "JSON object"),
    (b"null", "JSON object"),
    (b'{"messages": []}', "no 'model'"),
    (b'{"model": 3}', "'model' must be a string"),
    (b'{"model": ["alpha"]}', "'model' must be a string"),
    (b'{"model": null}', "'model' must be a string"),
    (b'{"model": {"name": "alpha"}}', "'model' must be a string"),
    # Deeper than Python's recursion limit, still under the body limit.
    (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
    (b'{"m":' * 1500 + b"1" + b"}" * 1500, "nested too deeply"),
]


def test_bad_bodies_get_openai_shaped_400s(open_gw: GatewayProc) -> None:
    with open_gw.client(timeout=30) as c:
        for body, needle in BAD_BODIES:
            for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/some/other/route"):
                r = c.post(path, content=body, headers={"Content-Type": "application/json"})
                error = error_of(r, 400)
                assert needle in error["message"], (body[:40], error)
                assert error["type"] == "invalid_request_error"
                assert r.headers["X-Request-ID"]
        # A string model that names nothing is a 404 that names it, and starts nothing.
        r = c.post("/v1/chat/completions", json=chat("no-such-model"))
        assert "no-such-model" in error_of(r, 404)["message"]
    assert_settled(open_gw)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nowhere", 404),
    ("POST", "/nowhere", 404),
    ("POST", "/v1/", 404),
    ("GET", "/v2/chat/completions", 404),
    ("POST", "/gateway/models/alpha/reboot", 404),
    ("GET", "/v1/chat/completions", 405),
    ("PUT", "/v1/chat/completions", 405),
    ("DELETE", "/v1/models", 405),
    ("DELETE", "/health", 405),
    ("PATCH", "/gateway/status", 405),
    ("GET", "/gateway/models/alpha/load", 405),
    ("OPTIONS", "/v1/chat/completions", 405),
])
def test_unknown_paths_and_methods_get_openai_errors(open_gw: GatewayProc, method: str,
                                                     path: str, status: int) -> None:
    r = httpx.request(method, open_gw.url + path, timeout=10)
    error = error_of(r, status)
    assert error["type"] == "invalid_request_error"
    assert path in error["message"]


def test_unreadable_header_values_do_not_break_a_request(open_gw: GatewayProc) -> None:
    body = b'{"model": "nobody"}'
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Request-ID: \xff\xfe\r\n"
            b"Authorization: Bearer \xff\xfe\r\nX-Odd: \xc3\xa9\xff\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    status, headers, answer = send_raw(open_gw.port, head + body)
    check_error(status, headers, answer, 404)
    # The unusable request id is replaced by one of the gateway's.
    assert re.fullmatch(r"[0-9a-f]{32}", headers.get("X-Request-ID", ""))
    assert_settled(open_gw)


def test_malformed_http_is_refused_and_the_gateway_goes_on(open_gw: GatewayProc) -> None:
    # These never reach a handler: aiohttp's parser answers 400 itself (in plain text).
    chunked = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
    for data in (b"BREW /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\n",
                 b"\x00\x01\x02 nonsense\r\n\r\n",
                 chunked + b"Content-Length: 4\r\n\r\n0\r\n\r\n",  # request smuggling
                 chunked + b"\r\n5\r\nabcde\r\nZZ\r\n"):  # a bad chunk size
        status, _, _ = send_raw(open_gw.port, data)
        assert status == 400
    assert_settled(open_gw)


# -- headers ------------------------------------------------------------------------------


def test_hop_by_hop_and_proxy_headers_are_not_forwarded(open_gw: GatewayProc) -> None:
    headers = {
        "Connection": "keep-alive, X-Named-Hop", "X-Named-Hop": "drop me",
        "Keep-Alive": "timeout=5", "TE": "trailers", "Upgrade": "h2c",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0", "Proxy-Connection": "keep-alive",
        "Proxy-Custom": "drop me", "X-End-To-End": "keep me",
    }

    def body() -> Iterator[bytes]:  # a generator body makes the client send it chunked
        yield b'{"model": "alpha", '
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    r = httpx.post(open_gw.url + "/v1/chat/completions", content=body(), headers=headers,
                   timeout=60)
    assert r.status_code == 200, r.text
    seen = {k.lower(): v for k, v in last_backend_request(open_gw, "alpha")["headers"].items()}
    for name in ("x-named-hop", "keep-alive", "te", "upgrade", "proxy-authorization",
                 "proxy-connection", "proxy-custom", "transfer-encoding"):
        assert name not in seen, (name, seen)
    assert seen.get("connection", "keep-alive").lower() in ("keep-alive", "close")
    assert seen["x-end-to-end"] == "keep me"
    assert int(seen["content-length"]) == len(b"".join(body()))
    assert_settled(open_gw)


def test_authorization_is_forwarded_only_when_the_model_says_so(open_gw: GatewayProc) -> None:
    token = {"Authorization": "Bearer client-token-for-upstream"}
    with open_gw.client(timeout=60) as c:
        assert c.post("/v1/chat/completions", json=chat("alpha"), headers=token).status_code == 200
        assert c.post("/v1/chat/completions", json=chat("beta"), headers=token).status_code == 200
    alpha = {k.lower(): v for k, v in last_backend_request(open_gw, "alpha")["headers"].items()}
    beta = {k.lower(): v for k, v in last_backend_request(open_gw, "beta")["headers"].items()}
    assert "authorization" not in alpha
    assert beta["authorization"] == token["Authorization"]


def test_request_id_is_kept_or_made_returned_and_forwarded(open_gw: GatewayProc) -> None:
    with open_gw.client(timeout=60) as c:
        r = c.post("/v1/chat/completions", json=chat("a"), headers={"X-Request-ID": "trace-42"})
        assert r.status_code == 200 and r.headers["X-Request-ID"] == "trace-42"
        assert last_backend_request(open_gw, "alpha")["headers"]["X-Request-ID"] == "trace-42"

        r = c.post("/v1/chat/completions", json=chat("alpha", stream=True))
        made = r.headers["X-Request-ID"]
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", made)
        assert last_backend_request(open_gw, "alpha")["headers"]["X-Request-ID"] == made

        # Too long to be an id (it would be copied into every log line): replaced.
        r = c.post("/v1/chat/completions", json=chat("alpha"), headers={"X-Request-ID": "x" * 500})
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])

        # Errors carry it too.
        r = c.post("/v1/chat/completions", json=chat("nope"), headers={"X-Request-ID": "e-1"})
        assert r.status_code == 404 and r.headers["X-Request-ID"] == "e-1"
    assert "trace-42" in open_gw.log()
    assert_settled(open_gw)


async def test_a_stream_ended_by_an_error_leaves_the_connection_usable(
        open_gw: GatewayProc) -> None:
    # One pooled connection for everything (aiohttp's client reuses it without a second
    # look): a stream that ended cleanly, with an in-band error event, must leave it usable.
    url = open_gw.url + "/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.post(url, json=chat("impatient")) as r:
            assert r.status == 200
        for _ in range(2):
            stalls = chat("impatient", stream=True, max_tokens=8, fake={"stall_after": 2})
            async with http.post(url, json=stalls) as r:
                text = await r.text()
            assert r.status == 200 and sse_events(text)[-1]["error"]["status"] == 504
            async with http.post(url, json=chat("impatient")) as r:
                assert r.status == 200, await r.text()
    assert_settled(open_gw)
