"""Bad input, header hygiene and access control, end to end against real gateway processes.

Two gateways are shared by the tests of this module (one open, one with API keys), so the
suite stays quick; each test asserts only what a client can see and leaves counters at 0.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from harness import GatewayProc, chat, fake_command, start_gateway, wait_until

LIMIT_MB = 0.01  # about 10 KB: big enough for any normal request of these tests
LIMIT_BYTES = int(LIMIT_MB * 1024 * 1024)
ADMIN_SECRET = "adm-7f3c2a9e5b1d4c8f"
USER_SECRET = "usr-1e8b6d0a4f2c9e37"
LIMITED_SECRET = "lim-5a9d3f7b1c0e8246"
STATUS_SECRET = "sts-0c4e8a2f6b9d1357"
ALL_SECRETS = (ADMIN_SECRET, USER_SECRET, LIMITED_SECRET, STATUS_SECRET)


@contextmanager
def running(tmp: Path, models: dict[str, Any], **kwargs: Any) -> Iterator[GatewayProc]:
    """A gateway for a whole module; stopped afterwards, with no process left behind."""
    gw = start_gateway(tmp, models, **kwargs)
    try:
        yield gw
    finally:
        children = []
        try:
            children = psutil.Process(gw.proc.pid).children(recursive=True)
        except psutil.Error:
            pass
        gw.stop()
        _, alive = psutil.wait_procs(children, timeout=15)
        for proc in alive:
            proc.kill()
        assert not alive, f"processes left behind by the gateway: {alive}"


def two_models() -> dict[str, Any]:
    return {
        "alpha": {"command": fake_command(worker=False), "aliases": ["a"]},
        "beta": {"command": fake_command(worker=False), "forward_authorization": True},
    }


@pytest.fixture(scope="module")
def open_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    with running(tmp_path_factory.mktemp("open"), two_models(),
                 server={"max_body_mb": LIMIT_MB}) as gw:
        yield gw


@pytest.fixture(scope="module")
def auth_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "user.key").write_text(USER_SECRET + "\n")
    keys = [
        {"name": "ops", "key_env": "TEST_ADMIN_KEY", "admin": True},
        # Relative key files are read next to the configuration file (tmp).
        {"name": "app", "key_file": "user.key", "models": ["alpha"]},
        {"name": "metered", "key_env": "TEST_LIMITED_KEY", "models": ["a"],
         "rate_limit_per_min": 2},
    ]
    env = {"TEST_ADMIN_KEY": ADMIN_SECRET, "TEST_LIMITED_KEY": LIMITED_SECRET,
           # The most talkative level: not even debug output may carry a secret.
           "LOG_LEVEL": "DEBUG"}
    with running(tmp, two_models(), env=env, auth={"keys": keys}) as gw:
        yield gw


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def check_error(status: int, headers: Mapping[str, str], body: bytes,
                expected: int) -> dict[str, Any]:
    """The answer is an OpenAI-shaped error with the expected status; its ``error``."""
    assert status == expected, (status, body[:300])
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert content_type.startswith("application/json"), content_type
    error: dict[str, Any] = json.loads(body)["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["code"]
    return error


def error_of(r: httpx.Response, expected: int) -> dict[str, Any]:
    return check_error(r.status_code, r.headers, r.content, expected)


def last_backend_request(gw: GatewayProc, model: str) -> dict[str, Any]:
    port = gw.model(model)["port"]
    doc: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/fake/last_request", timeout=10).json()
    return doc


def assert_settled(gw: GatewayProc) -> None:
    gw.wait_counters_zero()
    assert httpx.get(gw.url + "/health", timeout=10).status_code == 200


# -- bad input ----------------------------------------------------------------------------


def send_raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (a head and maybe only part of its body) and read the answer:
    it must come even when the rest of an announced body never does."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), body


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


# -- access control -----------------------------------------------------------------------


def test_v1_needs_a_key_that_may_use_the_model(auth_gw: GatewayProc) -> None:
    url = auth_gw.url + "/v1/chat/completions"
    for headers in ({}, bearer("wrong-key"), bearer(USER_SECRET[:-1]), bearer(USER_SECRET + "x"),
                    {"Authorization": USER_SECRET}, {"Authorization": f"Basic {USER_SECRET}"}):
        r = httpx.post(url, json=chat("alpha"), headers=headers, timeout=10)
        assert error_of(r, 401)["type"] == "authentication_error"
    # A key that is not even UTF-8 is just a wrong key.
    body = json.dumps(chat("alpha")).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    check_error(*send_raw(auth_gw.port, head + body), 401)
    # The key's own model, by name or alias, with any casing of the scheme.
    r = httpx.post(url, json=chat("alpha"), headers=bearer(USER_SECRET), timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(url, json=chat("a"), headers={"Authorization": f"bearer {USER_SECRET}"},
                   timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(url, json=chat("beta"), headers=bearer(USER_SECRET), timeout=10)
    error = error_of(r, 403)
    assert "beta" in error["message"] and "app" in error["message"]
    assert auth_gw.model("beta")["state"] == "stopped"
    r = httpx.post(url, json=chat("beta"), headers=bearer(ADMIN_SECRET), timeout=60)
    assert r.status_code == 200, r.text
    assert_settled(auth_gw)


def test_models_list_shows_what_the_key_may_use(auth_gw: GatewayProc) -> None:
    url = auth_gw.url + "/v1/models"
    error_of(httpx.get(url, timeout=10), 401)
    error_of(httpx.get(url, headers=bearer("wrong-key"), timeout=10), 401)

    def ids(secret: str) -> list[str]:
        r = httpx.get(url, headers=bearer(secret), timeout=10)
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()["data"]]

    assert ids(ADMIN_SECRET) == ["alpha", "beta"]
    assert ids(USER_SECRET) == ["alpha"]
    assert ids(LIMITED_SECRET) == ["alpha"]  # named by its alias in the configuration


def test_admin_endpoints_need_an_admin_key(auth_gw: GatewayProc) -> None:
    for action in ("load", "unload"):
        url = f"{auth_gw.url}/gateway/models/beta/{action}"
        error_of(httpx.post(url, timeout=10), 401)
        error_of(httpx.post(url, headers=bearer("wrong-key"), timeout=10), 401)
        r = httpx.post(url, headers=bearer(USER_SECRET), timeout=10)
        assert "not an admin" in error_of(r, 403)["message"]
    assert auth_gw.model("beta")["state"] in ("stopped", "ready")
    r = httpx.post(auth_gw.url + "/gateway/models/beta/load", headers=bearer(ADMIN_SECRET),
                   timeout=60)
    assert r.json() == {"name": "beta", "state": "ready"}
    r = httpx.post(auth_gw.url + "/gateway/models/beta/unload", headers=bearer(ADMIN_SECRET),
                   timeout=60)
    assert r.json() == {"name": "beta", "state": "stopped"}


def test_health_metrics_and_status_stay_open_by_default(auth_gw: GatewayProc) -> None:
    for path in ("/health", "/ready", "/metrics", "/gateway/status", "/gateway/events",
                 "/openapi.json"):
        assert httpx.get(auth_gw.url + path, timeout=10).status_code == 200, path


def test_protect_status_closes_metrics_and_status_but_not_health(tmp_path: Path) -> None:
    keys = [{"name": "watcher", "key_env": "TEST_STATUS_KEY"}]
    with running(tmp_path, {"alpha": {"command": fake_command(worker=False)}},
                 env={"TEST_STATUS_KEY": STATUS_SECRET},
                 auth={"protect_status": True, "keys": keys}) as gw:
        # The harness itself polls /ready, which must stay open for orchestrators.
        for path in ("/health", "/ready"):
            assert httpx.get(gw.url + path, timeout=10).status_code == 200
        for path in ("/metrics", "/gateway/status", "/gateway/events",
                     "/gateway/models/alpha/logs"):
            error_of(httpx.get(gw.url + path, timeout=10), 401)
            error_of(httpx.get(gw.url + path, headers=bearer("nope"), timeout=10), 401)
            r = httpx.get(gw.url + path, headers=bearer(STATUS_SECRET), timeout=10)
            assert r.status_code == 200, (path, r.text)
        assert STATUS_SECRET not in gw.log()


def test_rate_limit_is_429_with_retry_after(auth_gw: GatewayProc) -> None:
    url = auth_gw.url + "/v1/chat/completions"
    codes = []
    for _ in range(2):
        r = httpx.post(url, json=chat("alpha"), headers=bearer(LIMITED_SECRET), timeout=60)
        codes.append(r.status_code)
    assert codes == [200, 200]
    r = httpx.post(url, json=chat("alpha"), headers=bearer(LIMITED_SECRET), timeout=10)
    error = error_of(r, 429)
    assert error["type"] == "rate_limit_error" and "metered" in error["message"]
    # Two a minute: the next one is about 30 s away.
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    # Other keys have their own budget.
    r = httpx.post(url, json=chat("alpha"), headers=bearer(USER_SECRET), timeout=60)
    assert r.status_code == 200
    assert_settled(auth_gw)


def test_secrets_never_reach_the_log(auth_gw: GatewayProc) -> None:
    """Runs after the other access tests of this module (file order): every key was used."""
    near_miss = ADMIN_SECRET[:-1] + "0"
    for n, secret in enumerate((ADMIN_SECRET, USER_SECRET, LIMITED_SECRET, near_miss)):
        httpx.get(auth_gw.url + "/v1/models", headers=bearer(secret), timeout=10)
        httpx.post(auth_gw.url + "/v1/chat/completions", json=chat("alpha"),
                   headers={**bearer(secret), "X-Request-ID": f"secret-check-{n}"}, timeout=60)
    # Each request's access line is written once its answer is out: wait for the last one.
    wait_until(lambda: "secret-check-3" in auth_gw.log(), 10, what="the last access line")
    log = auth_gw.log()
    assert "DEBUG" in log  # the test would prove little at a quieter level
    for secret in (*ALL_SECRETS, near_miss):
        assert secret not in log
    logs = httpx.get(auth_gw.url + "/gateway/models/alpha/logs?lines=1000", timeout=10).text
    for secret in (*ALL_SECRETS, near_miss):
        assert secret not in logs


def test_a_secret_written_in_the_yaml_is_refused(tmp_path: Path) -> None:
    keys = [{"name": "inline", "key": "hunter2-in-the-file"}]
    gw = start_gateway(tmp_path, {"alpha": {"command": fake_command()}}, wait=False,
                       auth={"keys": keys})
    assert gw.proc.wait(30) == 2
    log = gw.log()
    assert "auth.keys[0].key: secrets must come from key_env or key_file" in log
    assert "hunter2-in-the-file" not in log
