"""Access control with API keys, end to end: who may call which model, who may administer,
what stays open, rate limits, and secrets that never reach a log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import GatewayProc, chat, fake_command, start_gateway
from helpers import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from security_helpers import (
    assert_settled,
    bearer,
    check_error,
    error_of,
    running,
    send_raw,
    two_models,
)

ADMIN_SECRET = "adm-7f3c2a9e5b1d4c8f"
USER_SECRET = "usr-1e8b6d0a4f2c9e37"
LIMITED_SECRET = "lim-5a9d3f7b1c0e8246"
STATUS_SECRET = "sts-0c4e8a2f6b9d1357"
ALL_SECRETS = (ADMIN_SECRET, USER_SECRET, LIMITED_SECRET, STATUS_SECRET)


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


@settings(max_examples=80, deadline=None, derandomize=True)
@given(value=st.binary(min_size=1, max_size=120).map(
    # What HTTP lets through in a header value: visible ASCII and the rest of Latin-1.
    lambda raw: bytes(b if 0x21 <= b <= 0x7e or b >= 0x80 else 0x20 for b in raw).strip()
    or b"x"))
def fuzz_authorization(client: httpx.Client, value: bytes) -> None:
    for header in (value, b"Bearer " + value):
        r = client.post("/v1/chat/completions", json=chat("alpha"),
                        headers={b"Authorization": header})
        assert error_of(r, 401)["type"] == "authentication_error"


def test_any_other_authorization_is_a_401(auth_gw: GatewayProc) -> None:
    with auth_gw.client(timeout=10) as client:
        fuzz_authorization(client)


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
    for action in ("load", "unload", "sleep"):
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


def test_a_model_scoped_key_cannot_walk_out_of_v1(auth_gw: GatewayProc) -> None:
    # The key may use alpha on /v1/*; the path check comes before the key's scope, on the
    # same path, so a dot segment never reaches the model's other routes nor the admin ones.
    body = json.dumps(chat("alpha")).encode()
    for target in ("/v1/../gateway/models/alpha/unload", "/v1/%2e%2e/fake/hang",
                   "/v1/%2E%2e%2Ffake%2Fhang", "/gateway/models/alpha/../beta/load"):
        head = (f"POST {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {USER_SECRET}"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        assert check_error(*send_raw(auth_gw.port, head + body), 400)["code"] == "invalid_path"
    assert auth_gw.model("beta")["state"] in ("stopped", "ready")
    r = httpx.post(auth_gw.url + "/v1/chat/completions", json=chat("alpha"),
                   headers=bearer(USER_SECRET), timeout=60)
    assert r.status_code == 200, r.text


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
    """Every key and a near miss are used here at DEBUG level: none is in any log."""
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
