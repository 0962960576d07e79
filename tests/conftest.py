from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import GatewayProc, start_gateway


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    """Start real gateways; each is stopped and checked for leftover processes afterwards."""
    started: list[GatewayProc] = []

    def start(models: dict[str, Any], **kwargs: Any) -> GatewayProc:
        gw = start_gateway(tmp_path, models, **kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
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
