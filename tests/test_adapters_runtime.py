"""LoRA adapters in the runtime, in-process: loaded on demand into a running base, once for
concurrent first requests, bounded by max_adapters with the least recently used idle one
unloaded, failures as 503 without harm to the base, and none left after a restart."""

from __future__ import annotations

import asyncio

import pytest
from helpers import wait_for
from runtime_fakes import FakeLora, make_manager

from vllm_gateway.config import AdapterConfig
from vllm_gateway.errors import BackendUnavailable, ModelNotFound
from vllm_gateway.lifecycle import State
from vllm_gateway.runtime.manager import Manager


def adapters(*names: str) -> dict[str, AdapterConfig]:
    return {n: AdapterConfig(n, "base", f"/adapters/{n}", (f"{n}-alias",)) for n in names}


def setup(*names: str, max_adapters: int = 2) -> tuple[Manager, FakeLora]:
    lora = FakeLora()
    manager, _ = make_manager({"base": 10}, gpus=[40], lora=lora, adapters=adapters(*names),
                              max_adapters=max_adapters)
    return manager, lora


async def ask(manager: Manager, name: str) -> None:
    inst, adapter = manager.resolve_target(name)
    async with manager.lease(inst, adapter=adapter):
        pass


async def test_an_adapter_request_starts_the_base_and_loads_the_adapter_once() -> None:
    manager, lora = setup("a1")
    lora.gate = asyncio.Event()
    asks = [asyncio.create_task(ask(manager, "a1")) for _ in range(3)]
    await wait_for(lambda: lora.calls)
    lora.gate.set()
    await asyncio.gather(*asks)
    assert lora.calls == [("load", "a1")]
    base = manager.instances["base"]
    assert base.state is State.READY and base.limiter.in_flight == 0
    assert [a["name"] for a in manager.adapters["base"].status()] == ["a1"]


async def test_an_alias_names_the_adapter_and_an_unknown_name_is_not_found() -> None:
    manager, _ = setup("a1")
    inst, adapter = manager.resolve_target("a1-alias")
    assert inst.name == "base" and adapter is not None and adapter.name == "a1"
    with pytest.raises(ModelNotFound):
        manager.resolve_target("nope")


async def test_past_max_adapters_the_least_recently_used_idle_one_is_unloaded() -> None:
    manager, lora = setup("a1", "a2", "a3")
    await ask(manager, "a1")
    await ask(manager, "a2")
    await ask(manager, "a1")  # a2 is now the least recently used
    await ask(manager, "a3")
    assert lora.calls == [("load", "a1"), ("load", "a2"), ("unload", "a2"), ("load", "a3")]
    assert sorted(str(a["name"]) for a in manager.adapters["base"].status()) == ["a1", "a3"]


async def test_an_adapter_with_a_request_in_flight_is_never_unloaded() -> None:
    manager, lora = setup("a1", "a2", max_adapters=1)
    inst, a1 = manager.resolve_target("a1")
    release = asyncio.Event()

    async def hold() -> None:
        async with manager.lease(inst, adapter=a1):
            await release.wait()

    holder = asyncio.create_task(hold())
    await wait_for(lambda: inst.limiter.in_flight == 1)
    second = asyncio.create_task(ask(manager, "a2"))
    await asyncio.sleep(0.2)
    assert ("unload", "a1") not in lora.calls and not second.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, second), 5)
    assert lora.calls[-2:] == [("unload", "a1"), ("load", "a2")]


async def test_a_failed_load_is_503_with_the_reason_and_the_base_keeps_serving() -> None:
    manager, lora = setup("bad", "good")
    lora.bad.add("bad")
    with pytest.raises(BackendUnavailable, match="No adapter found"):
        await ask(manager, "bad")
    base = manager.instances["base"]
    assert base.state is State.READY and base.limiter.in_flight == base.limiter.queued == 0
    await ask(manager, "good")
    await ask(manager, "base")


async def test_a_restarted_base_comes_back_with_no_adapters() -> None:
    manager, lora = setup("a1")
    await ask(manager, "a1")
    await manager.unload(manager.instances["base"])
    assert manager.adapters["base"].status() == []
    await ask(manager, "a1")
    assert lora.calls == [("load", "a1"), ("load", "a1")]
