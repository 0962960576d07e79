"""GPU inventory through a fake NVML (pynvml's interface, canned readings)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from vllm_gateway.config import GatewayConfig, GpuSpec, ModelConfig
from vllm_gateway.gpu import (
    FakeNvml,
    GpuDiscoveryError,
    NvmlReader,
    inventory,
    open_nvml,
    wait_released,
)
from vllm_gateway.web.app import create_app


def test_declared_gpus_win_over_nvml() -> None:
    reader = NvmlReader(FakeNvml([80.0, 80.0]))
    assert [(g.id, g.total_gb) for g in inventory([GpuSpec(3, 40.0)], reader)] == [(3, 40.0)]
    assert [(g.id, g.total_gb) for g in inventory(None, reader)] == [(0, 80.0), (1, 80.0)]
    assert inventory(None, None) == []


def test_nvml_readings() -> None:
    fake = FakeNvml([24.0, 48.0], used_gb=[1.5, 0.0])
    reader = NvmlReader(fake)
    assert fake.initialised
    readings = reader.read_now()
    assert reader.cached() == readings
    assert [(r.id, round(r.total_gb, 3), round(r.used_gb, 3)) for r in readings] == [
        (0, 24.0, 1.5), (1, 48.0, 0.0)]
    reader.close()
    assert not fake.initialised


def test_no_driver_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        open_nvml().close()
        pytest.skip("an NVIDIA driver is present here")
    except GpuDiscoveryError as exc:
        message = str(exc)
    assert "NVIDIA driver" in message and "vram_gb" in message and "TOTAL_GPU_VRAM" in message


async def test_wait_released_waits_for_the_driver() -> None:
    fake = FakeNvml([40.0], used_gb=[24.0])
    reader = NvmlReader(fake)
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, lambda: fake.used_gb.__setitem__(0, 0.2))
    started = loop.time()
    assert await wait_released(reader, [0], {0: 0.0}, timeout_s=5)
    assert loop.time() - started >= 0.25
    fake.used_gb[0] = 30.0
    assert not await wait_released(reader, [0], {0: 0.0}, timeout_s=0.3)


async def test_status_shows_the_drivers_reading_beside_placed_memory() -> None:
    config = GatewayConfig(gpus="auto", models={"m": ModelConfig(name="m", url="http://127.0.0.1:9")})
    app = create_app(config, nvml=FakeNvml([80.0, 40.0], used_gb=[3.25, 0.0]))
    async with TestClient(TestServer(app)) as client:
        status = await (await client.get("/gateway/status")).json()
        metrics = await (await client.get("/metrics")).text()
    assert status["gpus"] == [
        {"id": 0, "node": None, "vram_gb": 80.0, "used_gb": 0.0, "driver_used_gb": 3.25},
        {"id": 1, "node": None, "vram_gb": 40.0, "used_gb": 0.0, "driver_used_gb": 0.0},
    ]
    assert 'vllm_gateway_gpu_memory_driver_used_gb{gpu="0"} 3.25' in metrics
    assert 'vllm_gateway_gpu_memory_total_gb{gpu="1"} 40.0' in metrics


def test_serve_with_gpus_auto_and_no_driver_fails_clearly(tmp_path: Path) -> None:
    try:
        open_nvml().close()
        pytest.skip("an NVIDIA driver is present here")
    except GpuDiscoveryError:
        pass
    config = tmp_path / "auto.yaml"
    config.write_text("gpus: auto\nserver: {port: 0}\nmodels:\n  m: {command: x, vram_gb: 10}\n")
    result = subprocess.run([sys.executable, "-m", "vllm_gateway.cli", "serve", "--config",
                             str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "NVIDIA driver" in result.stderr and "Traceback" not in result.stderr
