"""A cluster that cannot be reached stops the gateway at start with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import start_gateway
from helpers import free_port
from ray_fixtures import _need_ray, ray_model

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("where", ["ray", "env"])
def test_unreachable_address_names_the_key_and_the_address(tmp_path: Path, where: str) -> None:
    _need_ray()
    port = free_port()
    address = f"ray://127.0.0.1:{port}" if where == "ray" else f"127.0.0.1:{port}"
    ray = {"address": address if where == "ray" else "auto"}
    env = {"RAY_ADDRESS": address} if where == "env" else {}
    gw = start_gateway(tmp_path, {"a": ray_model("x", 10)}, gpus="ray", ray=ray, env=env,
                       wait=False)
    assert gw.proc.wait(60) == 2
    log = gw.log()
    assert "ray.address" in log and f"127.0.0.1:{port}" in log
    assert "Connection refused" in log or "refused" in log.lower()
