from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import GatewayProc, start_gateway, stop_leaving_nothing


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
        stop_leaving_nothing(gw)
