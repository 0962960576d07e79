"""Helpers of the security suites: shared gateways, OpenAI error checks, raw HTTP."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from harness import GatewayProc, fake_command, start_gateway, stop_leaving_nothing


@contextmanager
def running(tmp: Path, models: dict[str, Any], **kwargs: Any) -> Iterator[GatewayProc]:
    """A gateway for a whole module; stopped afterwards, with no process left behind."""
    gw = start_gateway(tmp, models, **kwargs)
    try:
        yield gw
    finally:
        stop_leaving_nothing(gw)


def two_models() -> dict[str, Any]:
    return {
        "alpha": {"command": fake_command(worker=False), "aliases": ["a"]},
        "beta": {"command": fake_command(worker=False), "forward_authorization": True},
    }


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


def send_raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (a head and maybe only part of its body) and read the answer:
    it must come even when the rest of an announced body never does."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), body
