from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import GatewayProc, start_gateway, stop_leaving_nothing
from inproc import InProcessGateway, in_process_gateway


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


@pytest.fixture
async def inproc(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[InProcessGateway]]]:
    """Start gateways in this event loop (see inproc.py); each is stopped and checked for
    servers left running afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        async def start(models: dict[str, Any], **kwargs: Any) -> InProcessGateway:
            return await stack.enter_async_context(in_process_gateway(tmp_path, models, **kwargs))

        yield start
