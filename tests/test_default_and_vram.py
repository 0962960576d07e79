"""A resident default that comes back, and GPU memory measured rather than declared (issue 20),
in-process with the fake launcher, a manual clock and the fake NVML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime_fakes import kinds, make_manager, settle

from vllm_gateway.gpu import FakeNvml, NvmlReader
from vllm_gateway.lifecycle import State
from vllm_gateway.runtime.clock import ManualClock
from vllm_gateway.runtime.manager import Manager
from vllm_gateway.runtime.status import status
from vllm_gateway.runtime.vram import MeasuredVram


def model(manager: Manager, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in status(manager)["models"] if m["name"] == name)
    return found


async def test_a_default_evicted_by_a_large_model_returns_after_it_leaves_not_while_it_stays(
) -> None:
    clock = ManualClock()
    manager, _ = make_manager({"home": 20, "big": 40}, gpus=[40], clock=clock,
                              idle_timeout_s=600, per_model={"home": {"default": True}})
    home, big = manager.instances["home"], manager.instances["big"]
    await manager.preload()
    assert home.state is State.READY and big.state is State.STOPPED
    clock.advance(700)
    assert manager.reap() == []  # a default is resident: not stopped for being idle
    await manager.ensure_ready(big)
    assert home.state is State.STOPPED and kinds(manager, "evicted") == ["home"]
    for _ in range(3):  # big stays (idle, but it holds the room): home does not come back
        clock.advance(100)
        assert manager.scaler.tick() == []
    await manager.unload(big)
    assert manager.scaler.tick() == []  # the room is free from now on
    clock.advance(29)
    assert manager.scaler.tick() == []
    clock.advance(2)
    assert manager.scaler.tick() == ["home"]
    await settle(manager)
    assert model(manager, "home")["state"] == "ready" and kinds(manager, "restore") == ["home"]


async def test_a_default_waits_for_its_room_to_stay_free() -> None:
    clock = ManualClock()
    manager, _ = make_manager({"home": 20, "big": 40}, gpus=[40], clock=clock,
                              per_model={"home": {"default": True, "restore_after_s": 10}})
    home, big = manager.instances["home"], manager.instances["big"]
    await manager.preload()
    await manager.ensure_ready(big)
    await manager.unload(big)
    assert manager.scaler.tick() == []
    clock.advance(8)
    await manager.ensure_ready(big)  # back before the room stayed free long enough
    assert manager.scaler.tick() == []
    await manager.unload(big)
    clock.advance(8)
    assert manager.scaler.tick() == []  # free again only since now
    clock.advance(11)
    assert manager.scaler.tick() == ["home"]
    await settle(manager)
    assert home.state is State.READY


async def test_a_sleeping_default_is_woken_once_its_room_is_free() -> None:
    clock = ManualClock()
    manager, _ = make_manager({"home": 20, "big": 39}, gpus=[40], clock=clock,
                              per_model={"home": {"default": True, "sleep": 1,
                                                  "restore_after_s": 5}})
    home, big = manager.instances["home"], manager.instances["big"]
    await manager.preload()
    await manager.ensure_ready(big)  # home sleeps at its residual of 1 GB
    assert home.state is State.SLEEPING and big.state is State.READY
    await manager.unload(big)
    manager.scaler.tick()
    clock.advance(6)
    assert manager.scaler.tick() == ["home"]
    await settle(manager)
    assert home.state is State.READY and kinds(manager, "woken") == ["home"]


def _nvml_manager(tmp_path: Path, **kw: Any) -> tuple[Manager, FakeNvml]:
    fake = FakeNvml([80.0, 80.0])
    manager, _ = make_manager({"m": kw.pop("vram", 30.0)}, gpus=[80, 80],
                              gpus_reader=NvmlReader(fake),
                              vram=MeasuredVram(tmp_path / "measured-vram.json"), **kw)
    # The server's process group: the fake launcher's pid (1001 for the first server) and a
    # worker; another process on the same GPU is not the server's.
    manager.svc.group_pids = lambda pid: [pid, pid + 500]
    fake.processes = {0: {1001: 1.25, 1501: 15.5, 4242: 60.0}}
    return manager, fake


async def test_vram_auto_learns_from_the_measured_per_process_figures(tmp_path: Path) -> None:
    manager, _ = _nvml_manager(tmp_path, vram_auto=True)
    assert model(manager, "m")["vram_gb"] == 30.0  # vram_gb_estimate: the first guess
    assert model(manager, "m")["measured_vram_gb"] is None
    await manager.ensure_ready(manager.instances["m"])
    doc = model(manager, "m")
    assert doc["measured_vram_gb"] == 16.75 and doc["vram_gb"] == 16.75
    assert doc["replicas"][0]["measured_vram_gb"] == 16.75 and doc["vram_warning"] is None
    assert status(manager)["gpus"][0]["used_gb"] == 16.75  # accounted with what it holds
    await manager.shutdown()
    # A restarted gateway plans with the figure it measured last.
    again, _ = _nvml_manager(tmp_path, vram_auto=True)
    assert model(again, "m")["vram_gb"] == 16.75
    assert model(again, "m")["measured_vram_gb"] == 16.75
    await again.ensure_ready(again.instances["m"])
    assert again.instances["m"].gpu_memory_utilization == 0.2  # 16.75 of 80 GB, rounded down


async def test_more_than_declared_is_a_warning_in_events_and_status(tmp_path: Path) -> None:
    manager, _ = _nvml_manager(tmp_path, vram=15.0)
    await manager.ensure_ready(manager.instances["m"])
    doc = model(manager, "m")
    assert doc["measured_vram_gb"] == 16.75 and doc["vram_gb"] == 15.0
    assert "16.75 GB" in doc["vram_warning"] and "vram_gb of 15" in doc["vram_warning"]
    assert kinds(manager, "vram_over") == ["m"]
    await manager.shutdown()
    # Within 5 % is no warning.
    calm, _ = _nvml_manager(tmp_path / "calm", vram=16.0)
    await calm.ensure_ready(calm.instances["m"])
    assert model(calm, "m")["vram_warning"] is None and kinds(calm, "vram_over") == []


async def test_without_nvml_nothing_is_measured() -> None:
    manager, _ = make_manager({"m": 10}, gpus=[40], vram_auto=True)
    await manager.ensure_ready(manager.instances["m"])
    doc = model(manager, "m")
    assert doc["measured_vram_gb"] is None and doc["vram_gb"] == 10
