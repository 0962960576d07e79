"""The dashboard against a stand-in gateway: what it shows, and the admin-key flow."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from stub_gateway import StubGateway, serving

Screenshot = Callable[[Any, str], Awaitable[Path]]  # the conftest's screenshot fixture
ADMIN_KEY = "stub-admin-key"
TIMEOUT_MS = 15_000


@pytest.fixture
async def stub() -> AsyncIterator[tuple[StubGateway, str]]:
    gateway = StubGateway(admin_key=ADMIN_KEY)
    async with serving(gateway) as url:
        yield gateway, url


async def test_renders_status_and_asks_for_the_admin_key(
    stub: tuple[StubGateway, str], page_and_errors: tuple[Any, list[str]], screenshot: Screenshot
) -> None:
    from playwright.async_api import expect

    gateway, url = stub
    page, errors = page_and_errors
    await page.goto(url + "/gateway/ui")

    llama = page.locator('tr[data-model="llama-3.1-8b"]')
    await expect(llama.locator('[data-field="state"]')).to_have_text("ready", timeout=TIMEOUT_MS)
    await expect(llama.locator('[data-field="in_flight"]')).to_have_text("3 / 50")
    await expect(llama.locator('[data-field="kv"]')).to_have_text("37 %")
    await expect(llama.locator('[data-field="last_used"]')).to_have_text(re.compile(r"^\d+ s ago$"))
    await expect(llama.locator('[data-field="gpus"]')).to_have_text("GPU 0")
    # A base's loaded LoRA adapters are shown under it; a model without adapters shows none.
    await expect(llama.locator('[data-field="adapters"]')).to_contain_text("LoRA")
    await expect(llama.locator('[data-adapter="chat"]')).to_have_text("chat")
    await expect(llama.locator('[data-adapter="sql"]')).to_have_text("sql · 2 in flight")
    await expect(page.locator('tr[data-model="mistral-7b"] [data-field="adapters"]')).to_be_hidden()
    await expect(page.locator('tr[data-model="bge-m3"] [data-field="last_used"]')).to_have_text(
        "50 min ago"
    )
    starting = page.locator('tr[data-model="qwen2.5-coder-7b"] [data-field="start"]')
    await expect(starting).to_have_text(re.compile(r"^starting \d+\.\d s$"))
    await expect(page.locator('tr[data-error-for="phi-4"]')).to_contain_text("CUDA out of memory")
    await expect(page.locator('[data-gpu="0"] [data-field="used"]')).to_have_text(
        "34 / 40 GB placed"
    )
    await expect(page.locator('[data-gpu="1"] [data-field="driver"]')).to_have_text("driver reports 17 GB in use")
    await expect(page.locator('#events .event[data-kind="failed"]')).to_contain_text("phi-4")
    await expect(page.locator('button[data-action="load"][data-model="llama-3.1-8b"]')).to_be_disabled()
    await screenshot(page, "dashboard-stub.png")

    # Loading needs an admin key: the page asks for it, keeps it, and retries the click.
    bge = page.locator('tr[data-model="bge-m3"]')
    await bge.locator('button[data-action="load"]').click()
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
    await page.locator("#key-input").fill(ADMIN_KEY)
    await page.locator("#key-save").click()
    await expect(bge.locator('[data-field="state"]')).to_have_text("ready", timeout=TIMEOUT_MS)
    assert gateway.load_calls == [None, f"Bearer {ADMIN_KEY}"]
    assert await page.evaluate("sessionStorage.getItem('vllm-gateway.admin-key')") == ADMIN_KEY

    # The kept key is sent with the next action without asking again.
    await bge.locator('button[data-action="unload"]').click()
    await expect(bge.locator('[data-field="state"]')).to_have_text("stopped", timeout=TIMEOUT_MS)
    await expect(dialog).to_be_hidden()
    assert gateway.load_calls[-1] == f"Bearer {ADMIN_KEY}"
    await expect(page.locator('#events .event[data-model="bge-m3"][data-kind="stopped"]')).to_have_count(1)
    assert errors == []


async def test_polling_pauses_while_the_tab_is_hidden(
    stub: tuple[StubGateway, str], page_and_errors: tuple[Any, list[str]]
) -> None:
    from playwright.async_api import expect

    gateway, url = stub
    page, errors = page_and_errors
    await page.goto(url + "/")
    await expect(page.locator("#live")).to_have_attribute("data-live", "live", timeout=TIMEOUT_MS)
    await page.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    await expect(page.locator("#live")).to_have_attribute("data-live", "paused")
    # No poll while hidden: watch a window of several poll periods (1 s each) go by.
    calls = gateway.status_calls
    await asyncio.sleep(3)
    assert gateway.status_calls <= calls + 1  # one poll may have been on its way already
    await page.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", { configurable: true, get: () => false });
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    await expect(page.locator("#live")).to_have_attribute("data-live", "live", timeout=TIMEOUT_MS)
    assert errors == []
