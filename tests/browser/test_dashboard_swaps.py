"""The dashboard's new states and its timeline of the last hour, against a stand-in gateway.

The stand-in (``stub_gateway.swap_demo``) shares one 48 GB GPU among models in
every state and has logged an hour of events in which ``coder`` was started and
evicted for room again and again: the page must make that visible at a glance.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from stub_gateway import StubGateway, serving, swap_demo

Screenshot = Callable[..., Awaitable[Path]]  # the conftest's screenshot fixture
TIMEOUT_MS = 15_000


@pytest.fixture
async def swaps() -> AsyncIterator[tuple[StubGateway, str]]:
    models, history = swap_demo()
    gateway = StubGateway(models=models, gpu_vram_gb=(48.0,), history=history,
                          gpu_nodes=("gpu-a",))
    async with serving(gateway) as url:
        yield gateway, url


async def test_every_state_renders_with_its_hints_and_buttons(
    swaps: tuple[StubGateway, str], page_and_errors: tuple[Any, list[str]]
) -> None:
    from playwright.async_api import expect

    _, url = swaps
    page, errors = page_and_errors
    await page.goto(url + "/")

    def row(name: str) -> Any:
        return page.locator(f'tr[data-model="{name}"]')

    states = {"chat-70b-awq": "ready", "coder": "draining", "writer": "sleeping",
              "summarizer": "waking", "vision": "backoff", "broken-7b": "held", "embed": "stopped"}
    for name, state in states.items():
        badge = row(name).locator('[data-field="state"] .badge')
        await expect(badge).to_have_text(state, timeout=TIMEOUT_MS)
        await expect(badge).to_have_class(f"badge s-{state}")
    # Each state has a colour of its own: a draining model must not look like a starting one.
    colours = await page.evaluate(
        """() => [...document.querySelectorAll("#models-body .badge")].map(
            (b) => getComputedStyle(b).color)"""
    )
    assert len(set(colours)) >= 5, colours
    await expect(page.locator("#summary")).to_have_text(
        "1 GPU · 7 models · 1 ready · 1 draining · 1 sleeping · 1 waking · 1 backoff · 1 held"
    )

    start = '[data-field="start"]'
    await expect(row("writer").locator(start)).to_have_text("asleep 10 min · level 1")
    await expect(row("summarizer").locator(start)).to_have_text("waking (~1.8 s)")
    await expect(row("vision").locator(start)).to_have_text(re.compile(r"^retry in 2\d\.\d s$"))
    await expect(row("broken-7b").locator(start)).to_have_text("held: POST …/load")
    await expect(row("broken-7b").locator(start)).to_have_attribute(
        "title", re.compile(r"5 failed starts in a row: .*POST /gateway/models/broken-7b/load")
    )
    await expect(row("chat-70b-awq").locator(start)).to_have_text("took 48.2 s · woke in 0.4 s")
    await expect(page.locator('tr[data-error-for="vision"]')).to_contain_text("CUDA out of memory")
    await expect(row("writer").locator(".sub")).to_contain_text("1 wake checks failed")

    def button(name: str, action: str) -> Any:
        return row(name).locator(f'button[data-action="{action}"]')

    for name, state in states.items():
        can_load = state in ("stopped", "failed", "backoff", "held")
        can_unload = state in ("starting", "ready", "draining", "sleeping", "waking", "failed")
        await (expect(button(name, "load")).to_be_enabled() if can_load
               else expect(button(name, "load")).to_be_disabled())
        await (expect(button(name, "unload")).to_be_enabled() if can_unload
               else expect(button(name, "unload")).to_be_disabled())
    # Sleep is offered only where sleep is configured, and works only on a ready model.
    await expect(button("chat-70b-awq", "sleep")).to_be_enabled()
    await expect(button("writer", "sleep")).to_be_disabled()
    await expect(button("summarizer", "sleep")).to_be_disabled()
    for name in ("coder", "vision", "broken-7b", "embed"):
        await expect(button(name, "sleep")).to_be_hidden()

    # Awake models count in full; the sleeper only with its residual.
    gpu = page.locator('[data-gpu="0"]')
    await expect(gpu.locator(".gpu-head b")).to_have_text("GPU 0 · gpu-a")
    await expect(gpu.locator('[data-field="used"]')).to_have_text("47 / 48 GB placed")
    await expect(gpu.locator('.legend [data-model="writer"]')).to_have_text("writer 1 GB asleep")
    await expect(gpu.locator('.legend [data-model="summarizer"]')).to_have_text("summarizer 6 GB")
    await expect(gpu.locator('.legend [data-model="coder"]')).to_have_text("coder 16 GB")
    await expect(page.locator('[data-host] [data-field="host"]')).to_have_text(
        "16 / 115.2 GB held by sleepers"
    )

    await button("chat-70b-awq", "sleep").click()
    await expect(row("chat-70b-awq").locator('[data-field="state"]')).to_have_text(
        "sleeping", timeout=TIMEOUT_MS
    )
    await expect(button("chat-70b-awq", "sleep")).to_be_disabled()
    await button("broken-7b", "load").click()
    await expect(row("broken-7b").locator('[data-field="state"]')).to_have_text(
        "ready", timeout=TIMEOUT_MS
    )
    assert errors == []


async def test_timeline_shows_swaps_and_their_reasons(
    swaps: tuple[StubGateway, str], page_and_errors: tuple[Any, list[str]], screenshot: Screenshot
) -> None:
    from playwright.async_api import expect

    _, url = swaps
    page, errors = page_and_errors
    await page.goto(url + "/")

    coder = page.locator('#timeline .tl-row[data-model="coder"]')
    # Six starts in the hour, five evictions for room: flagged as swapping.
    await expect(coder.locator('.mark[data-kind="starting"]')).to_have_count(6, timeout=TIMEOUT_MS)
    await expect(coder.locator('.mark[data-kind="evicted"]')).to_have_count(5)
    await expect(coder.locator('[data-field="starts"]')).to_have_text("6 starts")
    await expect(coder.locator('[data-field="starts"]')).to_have_class("warn")
    # Each eviction ends a band; the track stays empty while the model is stopped.
    bands = await coder.locator(".band").evaluate_all("(bs) => bs.map((b) => b.dataset.band)")
    assert bands == ["starting", "loaded", "stopping"] * 5 + ["starting", "loaded", "draining"]
    covered = await coder.locator(".band").evaluate_all(
        "(bs) => bs.reduce((a, b) => a + parseFloat(b.style.width), 0)"
    )
    assert 50 < covered < 58, covered  # about 32 of the 60 minutes: five 6-minute stays and this one
    await expect(coder.locator('[data-field="rate"]')).to_have_text("2.3/min")
    await expect(coder.locator('[data-field="p95"]')).to_have_text("41.5 s")

    # Neither a model loaded once nor one that keeps failing to start is swapping.
    chat = page.locator('#timeline .tl-row[data-model="chat-70b-awq"]')
    await expect(chat.locator('[data-field="starts"]')).to_have_text("1 start")
    await expect(chat.locator('[data-field="starts"]')).not_to_have_class("warn")
    broken = page.locator('#timeline .tl-row[data-model="broken-7b"]')
    await expect(broken.locator('[data-field="starts"]')).to_have_text("5 starts")
    await expect(broken.locator('[data-field="starts"]')).not_to_have_class("warn")
    await expect(broken.locator('.mark[data-kind="failed"]')).to_have_count(5)
    await expect(chat.locator(".band")).to_have_count(2)  # starting, then loaded until now

    # The sleeper: loaded, drained, asleep up to the right edge ("now").
    writer = page.locator('#timeline .tl-row[data-model="writer"]')
    bands = await writer.locator(".band").evaluate_all("(bs) => bs.map((b) => b.dataset.band)")
    assert bands == ["starting", "loaded", "draining", "asleep"]
    edge = await writer.locator('.band[data-band="asleep"]').evaluate(
        "(b) => parseFloat(b.style.left) + parseFloat(b.style.width)"
    )
    assert edge == pytest.approx(100, abs=0.5)
    # A model that never ran in the hour has an empty track.
    embed = page.locator('#timeline .tl-row[data-model="embed"]')
    await expect(embed.locator(".band")).to_have_count(0)
    await expect(embed.locator('[data-field="rate"]')).to_have_text("0.0/min")
    await expect(embed.locator('[data-field="p95"]')).to_have_text("—")

    tip = page.locator("#tip")
    await expect(tip).to_be_hidden()
    await coder.locator('.mark[data-kind="evicted"]').first.hover()
    await expect(tip).to_be_visible()
    await expect(tip).to_have_text(
        re.compile(r"^\d\d:\d\d:\d\d evicted: stopping \(lru\) — room for another model$")
    )
    await writer.locator('.mark[data-kind="asleep"]').hover()
    await expect(tip).to_have_text(re.compile(r"asleep: level 1 \(idle\).* — idle timeout$"))
    await page.mouse.move(5, 5)
    await expect(tip).to_be_hidden()
    # The README's picture: every state and an hour of swaps.
    await screenshot(page, "dashboard.png", full_page=True)
    assert errors == []
