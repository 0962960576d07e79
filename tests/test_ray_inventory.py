"""The inventory of a Ray cluster's GPUs (gpus: ray), in-process against a fake cluster: ids,
sizes, nodes joining and leaving, a node reported lost, and what a lost node does to the
models on it (runtime.nodes.set_gpus with the fake launcher)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from helpers import wait_for
from runtime_fakes import make_manager

from vllm_gateway.cluster.inventory import Inventory
from vllm_gateway.cluster.nodes import ClusterError, FakeNodes
from vllm_gateway.cluster.ray_cluster import gpu_share
from vllm_gateway.lifecycle import State
from vllm_gateway.planner import Gpu
from vllm_gateway.runtime.nodes import set_gpus


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[list[Gpu], dict[str, str]]] = []

    def __call__(self, gpus: list[Gpu], causes: Mapping[str, str]) -> None:
        self.seen.append((gpus, dict(causes)))


async def test_gpus_of_alive_nodes_with_ids_unique_and_never_reused() -> None:
    nodes = FakeNodes()
    nodes.add("a" * 20, 1, memory=[80.0])
    nodes.add("b" * 20, 2)  # no NVML: the declared default
    nodes.add("h" * 20, 0)  # the head: no GPUs
    changes = Changes()
    inv = Inventory(nodes, 24.0, changes)
    assert await inv.refresh(strict=True)
    assert inv.gpus() == [Gpu(0, 80.0, "a" * 20), Gpu(1, 24.0, "b" * 20), Gpu(2, 24.0, "b" * 20)]
    assert inv.locate((2, 1)) == (nodes.nodes["b" * 20], (1, 0))
    assert inv.max_gpus_per_node() == 2

    nodes.remove("a" * 20)
    nodes.add("c" * 20, 1, memory=[40.0])
    assert await inv.refresh()
    gpus, causes = changes.seen[-1]
    assert [g.id for g in gpus] == [1, 2, 3]  # the new node's GPU does not take id 0
    assert causes == {"a" * 20: f"node 10.0.0.1 ({'a' * 12}) left the Ray cluster"}
    with pytest.raises(KeyError):
        inv.locate((0,))
    assert not await inv.refresh()  # nothing changed: nobody is told
    assert len(changes.seen) == 2
    assert nodes.memory_reads == 3  # sizes are read once per node, when it joins


async def test_a_node_without_nvml_or_default_is_an_error_at_start_naming_the_key() -> None:
    nodes = FakeNodes()
    nodes.add("a" * 20, 2)
    with pytest.raises(ClusterError, match=r"ray\.gpu_vram_gb: node 10\.0\.0\.1"):
        await Inventory(nodes, None, Changes()).refresh(strict=True)
    inv = Inventory(nodes, None, Changes())
    assert not await inv.refresh()  # later, such a node is only left out
    assert inv.gpus() == []


async def test_a_node_reported_lost_leaves_at_once_and_comes_back_if_it_answers() -> None:
    nodes = FakeNodes()
    nodes.add("a" * 20, 1)
    changes = Changes()
    inv = Inventory(nodes, 24.0, changes)
    await inv.refresh(strict=True)
    nodes.unreachable.add("a" * 20)
    inv.lose("a" * 20, "node lost: gone")
    assert inv.gpus() == [] and changes.seen[-1][1] == {"a" * 20: "node lost: gone"}
    assert not await inv.refresh()  # still listed, not answering: stays out
    nodes.unreachable.clear()
    assert await inv.refresh()
    assert [g.id for g in inv.gpus()] == [1]


async def test_the_watcher_notices_a_node_joining() -> None:
    nodes = FakeNodes()
    changes = Changes()
    inv = Inventory(nodes, 24.0, changes, poll_s=0.01)
    inv.start()
    try:
        nodes.add("a" * 20, 1)
        await wait_for(inv.gpus, 5, "the new node's GPUs")
    finally:
        await inv.stop()
    assert changes.seen and changes.seen[-1][0] == [Gpu(0, 24.0, "a" * 20)]


def test_gpu_share_in_rays_books() -> None:
    assert gpu_share(8, 24, 1) == 0.3333  # rounded down: three of them fit in 1.0
    assert gpu_share(8, 24, 1) * 3 <= 1.0
    assert gpu_share(30, 24, 1) == 1.0
    assert gpu_share(1e-9, 24, 1) == 0.0001
    assert gpu_share(10, 24, 2) == 2.0  # tensor parallel: whole GPUs
    assert gpu_share(0, 24, 1) == 0.0


async def test_a_lost_node_fails_its_model_with_the_cause_and_frees_its_gpu() -> None:
    manager, launcher = make_manager({"m": 16, "n": 16})
    manager.gpus = [Gpu(0, 24, "a"), Gpu(1, 24, "b")]
    m, n = manager.instances["m"], manager.instances["n"]
    await manager.ensure_ready(m)
    await manager.ensure_ready(n)
    assert {m.placement, n.placement} == {(0,), (1,)}
    on_a = m if m.placement == (0,) else n
    other = n if on_a is m else m

    assert set_gpus(manager, [Gpu(1, 24, "b")], {"a": "node 10.0.0.1 (aaaa) lost"}) == [on_a.key]
    assert on_a.state is State.FAILED
    assert on_a.last_error == "node 10.0.0.1 (aaaa) lost while ready"
    assert other.state is State.READY
    assert on_a.transition is not None
    await on_a.transition
    assert on_a.placement is None and manager.used_gb() == {1: 16.0}
    # The next request places it on what is left: node b, once the idle model there goes.
    await manager.ensure_ready(on_a)
    assert on_a.state is State.READY and on_a.placement == (1,)
    assert other.state is State.STOPPED
    assert len(launcher.handles) == 3


async def test_a_model_with_node_is_placed_only_on_that_node() -> None:
    manager, _ = make_manager({"m": 8, "free": 8}, per_model={"m": {"node": "10.0.0.2"}})
    names = {"a" * 20: frozenset({"a" * 20, "10.0.0.1"}),
             "b" * 20: frozenset({"b" * 20, "10.0.0.2", "gpu-b"})}
    set_gpus(manager, [Gpu(0, 24, "a" * 20), Gpu(1, 24, "b" * 20)], {}, names)
    m, free = manager.instances["m"], manager.instances["free"]
    await manager.ensure_ready(free)
    await manager.ensure_ready(m)
    assert free.placement == (0,) and m.placement == (1,)  # not beside free on the first GPU
